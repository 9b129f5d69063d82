checkpoint tts_plan:
    input:
        qa=expand(QA_TABLE, split=SPLITS),
    output:
        directory("results/audio/plan"),
    log:
        "logs/tts/plan.log",
    conda:
        "../envs/data.yaml"
    params:
        cfg=params_of("tts_plan"),
        code=code_version("tts_plan"),
        qa=lambda wildcards, input: repeat_opt("--qa", input.qa),
    shell:
        "python -m cordflow tts-plan --params {params.cfg:q} {params.qa} --out-dir {output:q} > {log:q} 2>&1"


rule tts_shard:
    input:
        plan=shard_plan,
    output:
        "results/audio/shards/{k}.parquet",
    log:
        "logs/tts/shard_{k}.log",
    conda:
        tts_env()
    threads: 2
    params:
        cfg=params_of("tts_shard"),
        code=code_version("tts_shard"),
    shell:
        "python -m cordflow tts-shard --params {params.cfg:q} --plan {input.plan:q}"
        " --out {output:q} --store results/audio/store --threads {threads}"
        " > {log:q} 2>&1"


rule tts_gather:
    input:
        shards=expand("results/audio/shards/{k}.parquet", k=range(N_SHARDS)),
    output:
        manifest=MANIFEST,
        rejected="results/audio/rejected.parquet",
        # the same rows as a table for the report (it offers parquet as text)
        rejected_table=report(
            "results/audio/rejected.html",
            caption="../report/audio_rejected.rst",
            category="Data",
        ),
    log:
        "logs/tts/gather.log",
    conda:
        "../envs/data.yaml"
    params:
        cfg=params_of("tts_gather"),
        code=code_version("tts_gather"),
        shards=lambda wildcards, input: repeat_opt("--shards", input.shards),
    shell:
        "python -m cordflow tts-gather --params {params.cfg:q} {params.shards}"
        " --out {output.manifest:q} > {log:q} 2>&1"
