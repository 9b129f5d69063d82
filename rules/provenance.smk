# The report's provenance summary: one row per artifact behind the final outputs (rule,
# sha256, code commit, times, host, Slurm job, check). It reads the .prov.json records the
# stages write (Snakemake does not track them), so it runs after everything else.
PROVENANCE_SUMMARY = "results/provenance/summary.csv"


rule provenance_summary:
    input:
        [f for f in final_outputs() if f != PROVENANCE_SUMMARY],
    output:
        report(
            PROVENANCE_SUMMARY,
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        "logs/provenance_summary.log",
    conda:
        "../envs/data.yaml"
    params:
        cfg=params_of("provenance_summary"),
        code=code_version("provenance_summary"),
        targets=lambda wildcards, input: repeat_opt("--target", input),
    shell:
        "python -m cordflow provenance-summary --params {params.cfg:q} {params.targets}"
        " --out {output:q} --results results > {log:q} 2>&1"
