rule base:
    input:
        qa_train=qa_table("train"),
        qa_test=qa_table("test"),
        manifest="results/audio/manifest.parquet",
    output:
        directory("results/models/base"),
    log:
        "logs/models/base.log",
    conda:
        "../envs/train.yaml"
    params:
        cfg=params_of("base"),
        code=code_version("base"),
    shell:
        "python -m cordflow base --params {params.cfg:q} --qa-train {input.qa_train:q}"
        " --qa-test {input.qa_test:q} --manifest {input.manifest:q} --out-dir {output:q}"
        " > {log:q} 2>&1"


rule sft:
    input:
        base=rules.base.output[0],
        qa_train=qa_table("train"),
        manifest="results/audio/manifest.parquet",
    output:
        directory("results/models/warmup"),
    log:
        "logs/models/sft.log",
    conda:
        "../envs/train.yaml"
    params:
        cfg=params_of("sft"),
        code=code_version("sft"),
    shell:
        "python -m cordflow sft --params {params.cfg:q} --base {input.base:q}"
        " --qa-train {input.qa_train:q} --manifest {input.manifest:q} --out-dir {output:q}"
        " > {log:q} 2>&1"
