rule train:
    """Fine-tune one model under one variant: full (seq2seq) or LoRA/QLoRA adapters through TRL (causal).
    Intermediate checkpoints live in results/checkpoints (not an output) so a killed run resumes."""
    input:
        prompts=prompts_dir,
        base=base_input,
        script="scripts/train.py",
        code=["src/kdsum/training.py", "src/kdsum/modeling.py"],
    output:
        model=directory("results/train/{model}/{variant}/model"),
        metrics="results/train/{model}/{variant}/train_metrics.json",
        history="results/train/{model}/{variant}/log_history.csv",
    params:
        config=CONFIG_PATH,
        base=base_source,
        checkpoints="results/checkpoints/{model}/{variant}",
        settings=settings,
    log:
        "results/logs/train/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/train/{model}/{variant}.tsv"
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/train.yaml"
    shell:
        "python {input.script} --config {params.config} --model {wildcards.model} --variant {wildcards.variant} "
        "--prompts-dir {input.prompts} --base {params.base} --out-dir results/train/{wildcards.model}/{wildcards.variant} "
        "--checkpoint-dir {params.checkpoints} > {log} 2>&1"
