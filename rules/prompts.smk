rule format_prompts:
    """Prompt dataset of one model family / prompt format, with the special tokens collected from the data."""
    input:
        data=expand("results/data/{split}.jsonl", split=data_splits()),
        spec=spec_file("prompts/{prompt_set}"),
        code=code("prompts"),
    output:
        directory("results/prompts/{prompt_set}"),
    log:
        "results/logs/prompts/{prompt_set}.log",
    benchmark:
        "results/benchmarks/prompts/{prompt_set}.tsv"
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum prompts --spec {input.spec:q} --data-dir results/data --out-dir {output:q} > {log:q} 2>&1"
