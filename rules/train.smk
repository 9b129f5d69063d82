rule train:
    input:
        unpack(train_kd_inputs),
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
        # kd methods with an acoustic split (train_kd_inputs): `--qa-acoustic PATH`;
        # their skill items (train.kd.acoustic_skills) come from the manifest
        kd=lambda wildcards, input: (
            repeat_opt("--qa-acoustic", [input.qa_acoustic])
            if "qa_acoustic" in input.keys()
            else ""
        ),
    shell:
        "python -m cordflow train --params {params.cfg:q} --init {input.init:q}"
        " --qa-train {input.qa_train:q} --manifest {input.manifest:q} --out-dir {output:q}"
        " {params.kd} --ranks {resources.ranks} > {log:q} 2>&1"
