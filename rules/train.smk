rule train:
    """Fine-tune one model under one variant: full (seq2seq) or LoRA/QLoRA adapters through TRL (causal).
    Intermediate checkpoints live in results/checkpoints (not an output), so a killed run resumes."""
    input:
        prompts=prompts_dir,
        base=base_dir,
        spec=model_spec,
        code=code("train"),
    output:
        model=directory("results/train/{model}/{variant}/model"),
        candidates=directory("results/train/{model}/{variant}/candidates"),
        metrics="results/train/{model}/{variant}/train_metrics.json",
        history="results/train/{model}/{variant}/log_history.csv",
    params:
        base=base_args,
    log:
        "results/logs/train/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/train/{model}/{variant}.tsv"
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum train --spec {input.spec:q} --prompts-dir {input.prompts:q} {params.base:q} "
        "--out-dir results/train/{wildcards.model:q}/{wildcards.variant:q} "
        "--checkpoint-dir results/checkpoints/{wildcards.model:q}/{wildcards.variant:q} > {log:q} 2>&1"
