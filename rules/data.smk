rule ingest:
    """Validate and normalise the raw splits; write data statistics."""
    input:
        unpack(raw_data),
        spec=spec_file("data"),
        code=code("ingest"),
    output:
        data=expand("results/data/{split}.jsonl", split=data_splits()),
        stats="results/data/stats.json",
    log:
        "results/logs/ingest/ingest.log",
    benchmark:
        "results/benchmarks/ingest/ingest.tsv"
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum ingest --spec {input.spec:q} --out-dir results/data > {log:q} 2>&1"
