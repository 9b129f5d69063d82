# The report's provenance summary: one row per artifact behind the final outputs (rule,
# sha256, code commit, times, host, Slurm job, check). It reads the .prov.json records the
# stages write (Snakemake does not track them), so it runs after everything else.
PROVENANCE_SUMMARY = "results/provenance/summary.csv"


rule provenance:
    input:
        [f for f in final_outputs() if f != PROVENANCE_SUMMARY],
    output:
        report(
            PROVENANCE_SUMMARY,
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        "logs/provenance.log",
    conda:
        "../envs/data.yaml"
    params:
        cfg=params_of("provenance"),
        code=code_version("provenance"),
        targets=lambda wildcards, input: repeat_opt("--target", input),
    shell:
        "python -m cordflow provenance --params {params.cfg:q} {params.targets}"
        " --out {output:q} --results results > {log:q} 2>&1"
