rule train:
    """Fine-tune one model under one variant: full (seq2seq) or LoRA/QLoRA adapters through TRL (causal).
    Intermediate checkpoints live in results/checkpoints (not an output), so a killed run resumes. The DVC metric is
    train_summary.json (a few numbers); train_metrics.json describes the run; tracking/ holds train.report_to's logs."""
    input:
        prompts=prompts_dir,
        base=base_dir,
        spec=model_spec,
        code=code("train"),
    output:
        model=directory("results/train/{model}/{variant}/model"),
        candidates=directory("results/train/{model}/{variant}/candidates"),
        report="results/train/{model}/{variant}/train_metrics.json",
        metrics="results/train/{model}/{variant}/train_summary.json",
        history="results/train/{model}/{variant}/log_history.csv",
        tracking=directory("results/train/{model}/{variant}/tracking"),
    log:
        "results/logs/train/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/train/{model}/{variant}.tsv"
    conda:
        "../envs/kdsum.yaml"
    threads: threads_for("train")
    resources:
        **train_resources(),
        gpu=train_gpus,
    params:
        base=base_args,
    shell:
        "kdsum train --spec {input.spec:q} --prompts-dir {input.prompts:q} {params.base:q} "
        "--out-dir results/train/{wildcards.model:q}/{wildcards.variant:q} "
        "--checkpoint-dir results/checkpoints/{wildcards.model:q}/{wildcards.variant:q} > {log:q} 2>&1"
