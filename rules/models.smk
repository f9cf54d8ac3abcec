rule build_base:
    """Offline default: tokenizer trained on the training dialogues, small model from config, brief pretraining."""
    input:
        train="results/data/train.jsonl",
        prompts=lambda wildcards: f"results/prompts/{spec_for(CFG, f'model/{wildcards.model}/zeroshot').prompt_set}",
        spec=spec_file("base/{model}"),
        tokenizer=build_tokenizer,
        code=code("build-base"),
    output:
        model=directory("results/base/{model}"),
        stats="results/base/{model}.json",  # build statistics, not scores: a plain output
    log:
        "results/logs/build_base/{model}.log",
    benchmark:
        "results/benchmarks/build_base/{model}.tsv"
    conda:
        "../envs/kdsum.yaml"
    threads: threads_for("build_base")
    resources:
        **resources_for("build_base"),
    shell:
        "kdsum build-base --spec {input.spec:q} --train {input.train:q} "
        "--special-tokens {input.prompts:q}/special_tokens.json --out-dir {output.model:q} "
        "--metrics {output.stats:q} > {log:q} 2>&1"
