rule summary:
    """One row per system: scores with intervals, length, foreign-script share, training cost; plots."""
    input:
        summary_inputs,
        script="scripts/summarize.py",
        code="src/kdsum/summary.py",
    output:
        csv=report("results/summary.csv", category="Summary", caption="../docs/report/summary.rst"),
        md="results/summary.md",
        scores_plot=report("results/plots/scores.png", category="Plots", caption="../docs/report/scores.rst"),
        loss_plot=report("results/plots/loss.png", category="Plots", caption="../docs/report/loss.rst"),
    params:
        config=CONFIG_PATH,
    log:
        "results/logs/summary/summary.log",
    benchmark:
        "results/benchmarks/summary/summary.tsv"
    conda:
        "../envs/eval.yaml"
    shell:
        "python {input.script} --config {params.config} --results results --out-csv {output.csv} "
        "--out-md {output.md} --scores-plot {output.scores_plot} --loss-plot {output.loss_plot} > {log} 2>&1"
