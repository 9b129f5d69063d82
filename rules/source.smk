rule source:
    input:
        local_source_files(),
    output:
        qa=expand(QA_TABLE, split=SPLITS),
        rejected="results/qa/rejected.parquet",
        # the same rows as a table for the report (it offers parquet as text)
        rejected_table=report(
            "results/qa/rejected.html",
            caption="../report/rejected.rst",
            category="Data",
        ),
    log:
        "logs/source.log",
    conda:
        "../envs/data.yaml"
    params:
        cfg=params_of("source"),
        code=code_version("source"),
    shell:
        "python -m cordflow source --params {params.cfg:q} --out-dir results/qa > {log:q} 2>&1"
