rule summary:
    """One row per system: scores with intervals, length, foreign-script share, training cost, the paired
    bootstrap against the best single system; plots."""
    input:
        unpack(summary_inputs),
        spec=spec_file("summary"),
        code=code("summary"),
    output:
        csv=report("results/summary.csv", category="Summary", caption="../docs/report/summary.rst"),
        md="results/summary.md",
        scores_plot=report("results/plots/scores.png", category="Plots", caption="../docs/report/scores.rst"),
        loss_plot=report("results/plots/loss.png", category="Plots", caption="../docs/report/loss.rst"),
    log:
        "results/logs/summary/summary.log",
    benchmark:
        "results/benchmarks/summary/summary.tsv"
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum summary --spec {input.spec:q} --scores {input.scores:q} --train-metrics {input.train_metrics:q} "
        "--log-histories {input.log_histories:q} --base-metrics {input.base_metrics:q} --items {input.item_scores:q} "
        "--report-scores {input.report_scores:q} --decodings {input.decodings:q} "
        "--submission {input.best_submission:q} --out-csv {output.csv:q} "
        "--out-md {output.md:q} --scores-plot {output.scores_plot:q} --loss-plot {output.loss_plot:q} > {log:q} 2>&1"


rule best_submission:
    """results/submission.csv: the submission of the system with the best final on the dev report rows (never a
    degenerate one), and submission.json naming it, the candidates' scores and the selection rule."""
    input:
        unpack(best_submission_inputs),
        data="results/data/test.jsonl",
        spec=spec_file("evaluation"),
        code=code("best-submission"),
    output:
        csv="results/submission.csv",
        json="results/submission.json",
    log:
        "results/logs/best_submission/best_submission.log",
    benchmark:
        "results/benchmarks/best_submission/best_submission.tsv"
    conda:
        "../envs/kdsum.yaml"
    params:
        systems=[s.name for s in submission_candidates()],
    shell:
        "kdsum best-submission --evaluation-spec {input.spec:q} --systems {params.systems:q} "
        "--scores {input.scores:q} --items {input.item_scores:q} --predictions {input.predictions:q} "
        "--data {input.data:q} --out-csv {output.csv:q} --out-json {output.json:q} > {log:q} 2>&1"
