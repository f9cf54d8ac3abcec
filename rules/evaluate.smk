rule evaluate:
    """ROUGE-1/2/L F1 on Kiwi morphemes against every reference, with bootstrap intervals and per-dialogue scores."""
    input:
        predictions="results/predictions/{model}/{variant}/{split}.csv",
        references="results/data/{split}.jsonl",
        script="scripts/evaluate.py",
        code="src/kdsum/metrics.py",
    output:
        scores="results/scores/{model}/{variant}/{split}.json",
        per_item="results/scores/{model}/{variant}/{split}_items.csv",
    params:
        aggregate=CFG["evaluation"]["aggregate"],
        bootstrap=CFG["evaluation"]["bootstrap"],
        seed=CFG["evaluation"]["seed"],
    log:
        "results/logs/evaluate/{model}/{variant}/{split}.log",
    benchmark:
        "results/benchmarks/evaluate/{model}/{variant}/{split}.tsv"
    conda:
        "../envs/eval.yaml"
    shell:
        "python {input.script} --predictions {input.predictions} --references {input.references} "
        "--out-json {output.scores} --out-items {output.per_item} --aggregate {params.aggregate} "
        "--bootstrap {params.bootstrap} --seed {params.seed} > {log} 2>&1"
