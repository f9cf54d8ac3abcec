rule build_base:
    """Offline default: tokenizer trained on the training dialogues, small model from config, brief pretraining."""
    input:
        train="results/data/train.jsonl",
        prompts=base_prompts_dir,
        script="scripts/build_base_model.py",
        code="src/kdsum/modeling.py",
    output:
        model=directory("results/base/{model}"),
        metrics="results/base/{model}.json",
    params:
        config=CONFIG_PATH,
        build=lambda wildcards: str(CFG["models"][wildcards.model].get("build")),
    log:
        "results/logs/build_base/{model}.log",
    benchmark:
        "results/benchmarks/build_base/{model}.tsv"
    threads: 2
    conda:
        "../envs/train.yaml"
    shell:
        "python {input.script} --config {params.config} --model {wildcards.model} --train {input.train} "
        "--special-tokens {input.prompts}/special_tokens.json --out-dir {output.model} "
        "--metrics {output.metrics} > {log} 2>&1"
