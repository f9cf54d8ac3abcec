rule evaluate:
    """ROUGE-1/2/L F1 on Kiwi morphemes against every reference, with bootstrap intervals and per-dialogue scores.
    The DVC metric is {split}_metrics.json (final and ROUGE-1/2/L); {split}.json adds intervals and diagnostics."""
    input:
        predictions="results/predictions/{system}/{split}.csv",
        references="results/data/{split}.jsonl",
        spec=spec_file("evaluation"),
        code=code("evaluate"),
    output:
        scores="results/scores/{system}/{split}.json",
        metrics="results/scores/{system}/{split}_metrics.json",
        per_item="results/scores/{system}/{split}_items.csv",
    log:
        "results/logs/evaluate/{system}/{split}.log",
    benchmark:
        "results/benchmarks/evaluate/{system}/{split}.tsv"
    wildcard_constraints:
        system=f"({one_of(CFG['models'])})/({one_of([*CFG['variants'], ZERO_SHOT])})|{BASELINE_MODEL}/[a-z]+|{ENSEMBLE_MODEL}/({one_of(CFG['ensembles']) or 'none'})",
    conda:
        "../envs/kdsum.yaml"
    params:
        token_cache=TOKEN_CACHE,
    shell:
        "kdsum evaluate --spec {input.spec:q} --predictions {input.predictions:q} "
        "--references {input.references:q} --out-json {output.scores:q} --out-metrics {output.metrics:q} "
        "--out-items {output.per_item:q} --token-cache {params.token_cache:q} > {log:q} 2>&1"
