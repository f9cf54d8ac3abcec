rule format_prompts:
    """Prompt dataset of one model family / prompt format, with the special tokens collected from the data."""
    input:
        data=expand("results/data/{split}.jsonl", split=plan.splits(CFG)),
        script="scripts/format_prompts.py",
        code="src/kdsum/prompts.py",
    output:
        directory("results/prompts/{prompt_set}"),
    params:
        config=CONFIG_PATH,
        args=lambda wildcards: plan.prompt_args(CFG, wildcards.prompt_set),
    log:
        "results/logs/prompts/{prompt_set}.log",
    benchmark:
        "results/benchmarks/prompts/{prompt_set}.tsv"
    conda:
        "../envs/data.yaml"
    shell:
        "python {input.script} --config {params.config} --data-dir results/data {params.args} "
        "--out-dir {output} > {log} 2>&1"
