rule replica:
    """A hub-shaped local replica of a seed model (public config, seeded random weights, the real tokenizer and
    chat template from ../shared/tokenizers): `source: results/replicas/<seed>-<size>` runs the hub code path.
    Not part of `all`: a model entry whose source is a replica makes it an input of that model's jobs."""
    input:
        train="results/data/train.jsonl",
        tokenizer=replica_tokenizer,
        code=code("replica"),
    output:
        directory("results/replicas/{seed}-{size}"),
    log:
        "results/logs/replica/{seed}-{size}.log",
    benchmark:
        "results/benchmarks/replica/{seed}-{size}.tsv"
    wildcard_constraints:
        seed="kobart-base|llama-3.2-3b|qwen3-4b|qwen2.5-7b|llama-3-8b",
        size="full|cpu",
    conda:
        "../envs/kdsum.yaml"
    params:
        tokenizers=CFG["replicas"]["tokenizers"],
    shell:
        "kdsum replica {wildcards.seed:q} --size {wildcards.size:q} --tokenizers {params.tokenizers:q} "
        "--train {input.train:q} --out {output:q} > {log:q} 2>&1"
