rule ingest:
    """Validate and normalise the raw splits; write data statistics."""
    input:
        unpack(lambda wildcards: raw_data()),
        script="scripts/ingest.py",
        code="src/kdsum/data.py",
    output:
        data=expand("results/data/{split}.jsonl", split=plan.splits(CFG)),
        stats="results/data/stats.json",
    params:
        args=ingest_args(),
    log:
        "results/logs/ingest/ingest.log",
    benchmark:
        "results/benchmarks/ingest/ingest.tsv"
    conda:
        "../envs/data.yaml"
    shell:
        "python {input.script} {params.args} --out-dir results/data > {log} 2>&1"
