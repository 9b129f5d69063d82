rule train:
    input:
        init=rules.sft.output[0],
        base=rules.base.output[0],
        qa_train=qa_table("train"),
        manifest="results/audio/manifest.parquet",
    output:
        directory("results/models/{method}"),
    params:
        cfg=params_of("train"),
        code=code_version("train"),
    log:
        "logs/train/{method}.log",
    conda:
        "../envs/train.yaml"
    shell:
        "{CORDFLOW} train --method {wildcards.method} --params {params.cfg:q}"
        " --init {input.init:q} --base {input.base:q} --qa-train {input.qa_train:q}"
        " --manifest {input.manifest:q} --out-dir {output:q} > {log:q} 2>&1"
