rule train:
    input:
        init=train_init,
        qa_train=qa_table("train"),
        manifest=MANIFEST,
    output:
        directory(model_dir("{method}")),
    log:
        "logs/train/{method}.log",
    conda:
        "../envs/train.yaml"
    params:
        cfg=train_params,
        code=code_version("train"),
    shell:
        "python -m cordflow train --params {params.cfg:q} --init {input.init:q}"
        " --qa-train {input.qa_train:q} --manifest {input.manifest:q} --out-dir {output:q}"
        " > {log:q} 2>&1"
