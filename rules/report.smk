rule report_page:
    """The examples page of `snakemake --report`: sampled and worst dialogues with every system's summary."""
    input:
        unpack(report_inputs),
        spec=spec_file("report"),
        code=code("report-page"),
    output:
        report(
            "results/report/examples.html",
            category="Examples",
            caption="../docs/report/examples.rst",
        ),
    log:
        "results/logs/report_page/report_page.log",
    benchmark:
        "results/benchmarks/report_page/report_page.tsv"
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum report-page --spec {input.spec:q} --data {input.data:q} --predictions {input.predictions:q} "
        "--items {input.item_scores:q} --out {output:q} > {log:q} 2>&1"
