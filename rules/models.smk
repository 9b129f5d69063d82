rule base:
    input:
        qa_train=qa_table("train"),
        qa_bar=bar_table(),
        qa_test=qa_table("test"),
        manifest=MANIFEST,
    output:
        directory(model_dir("base")),
    log:
        "logs/models/base.log",
    conda:
        "../envs/train.yaml"
    params:
        cfg=params_of("base"),
        code=code_version("base"),
        bar=lambda wildcards, input: repeat_opt("--qa-bar", input.qa_bar),
    shell:
        "python -m cordflow base --params {params.cfg:q} --qa-train {input.qa_train:q}"
        " {params.bar} --qa-test {input.qa_test:q} --manifest {input.manifest:q}"
        " --out-dir {output:q} --ranks {resources.ranks} > {log:q} 2>&1"


rule warmup:
    input:
        base=rules.base.output[0],
        qa_train=qa_table("train"),
        manifest=MANIFEST,
    output:
        directory(model_dir("warmup")),
    log:
        "logs/models/warmup.log",
    conda:
        "../envs/train.yaml"
    params:
        cfg=params_of("warmup"),
        code=code_version("warmup"),
    shell:
        "python -m cordflow warmup --params {params.cfg:q} --base {input.base:q}"
        " --qa-train {input.qa_train:q} --manifest {input.manifest:q} --out-dir {output:q}"
        " --ranks {resources.ranks} > {log:q} 2>&1"
