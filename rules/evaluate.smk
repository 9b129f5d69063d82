rule evaluate:
    input:
        unpack(eval_inputs),
    output:
        "results/eval/{model}/{benchmark}.parquet",
    log:
        "logs/evaluate/{model}/{benchmark}.log",
    conda:
        "../envs/eval.yaml"
    params:
        cfg=eval_params,
        code=code_version("evaluate"),
        # each input of the benchmark's kind (eval_inputs) as `--<name> PATH`
        data=lambda wildcards, input: " ".join(
            repeat_opt(f"--{k}", [input[k]]) for k in input.keys() if k != "model"
        ),
    shell:
        "python -m cordflow evaluate --params {params.cfg:q} --model {input.model:q}"
        " --model-name {wildcards.model} --benchmark {wildcards.benchmark} {params.data}"
        " --out {output:q} > {log:q} 2>&1"


rule summarize:
    input:
        eval_tables(),
    output:
        table=report(
            "results/eval/gap_table.csv",
            caption="../report/gap_table.rst",
            category="Audio-text gap",
        ),
        plot=report(
            "results/eval/gap_plot.png",
            caption="../report/gap_plot.rst",
            category="Audio-text gap",
        ),
        paired=report(
            "results/eval/paired.csv",
            caption="../report/paired.rst",
            category="Audio-text gap",
        ),
    log:
        "logs/summarize.log",
    conda:
        "../envs/eval.yaml"
    params:
        cfg=params_of("summarize"),
        code=code_version("summarize"),
        evals=lambda wildcards, input: repeat_opt("--eval", input),
    shell:
        "python -m cordflow summarize --params {params.cfg:q} {params.evals}"
        " --out-table {output.table:q} --out-plot {output.plot:q}"
        " --out-paired {output.paired:q} > {log:q} 2>&1"
