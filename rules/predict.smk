rule predict:
    """Summaries of one split by a fine-tuned model (batched, length-sorted, settings from config)."""
    input:
        prompts=prompts_dir,
        model="results/train/{model}/{variant}/model",
        script="scripts/predict.py",
        code=["src/kdsum/generation.py", "src/kdsum/modeling.py", "src/kdsum/training.py"],
    output:
        "results/predictions/{model}/{variant}/{split}.csv",
    wildcard_constraints:
        model="(?!baseline/)[a-z0-9]+(-[a-z0-9]+)*",
        variant="(?!zeroshot/)[a-z0-9]+(-[a-z0-9]+)*",
    params:
        config=CONFIG_PATH,
        settings=settings,
    log:
        "results/logs/predict/{model}/{variant}/{split}.log",
    benchmark:
        "results/benchmarks/predict/{model}/{variant}/{split}.tsv"
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/train.yaml"
    shell:
        "python {input.script} --config {params.config} --model {wildcards.model} --variant {wildcards.variant} "
        "--split {wildcards.split} --prompts-dir {input.prompts} --model-dir {input.model} --out {output} > {log} 2>&1"


rule predict_zeroshot:
    """Summaries by the base model without fine-tuning: the zero-shot reference row."""
    input:
        prompts=base_prompts_dir,
        base=base_input,
        script="scripts/predict.py",
        code=["src/kdsum/generation.py", "src/kdsum/modeling.py", "src/kdsum/training.py"],
    output:
        "results/predictions/{model}/zeroshot/{split}.csv",
    wildcard_constraints:
        model="(?!baseline/)[a-z0-9]+(-[a-z0-9]+)*",
    params:
        config=CONFIG_PATH,
        base=lambda wildcards: plan.base_source(resolve(CFG, wildcards.model, ZERO_SHOT)),
        settings=lambda wildcards: plan.settings_fingerprint(CFG, wildcards.model, ZERO_SHOT),
    log:
        "results/logs/predict/{model}/zeroshot/{split}.log",
    benchmark:
        "results/benchmarks/predict/{model}/zeroshot/{split}.tsv"
    threads: 2
    resources:
        gpu=1,
    conda:
        "../envs/train.yaml"
    shell:
        "python {input.script} --config {params.config} --model {wildcards.model} --variant zeroshot "
        "--split {wildcards.split} --prompts-dir {input.prompts} --base {params.base} --out {output} > {log} 2>&1"


rule baseline:
    """Cheap non-neural reference systems (lead, longest utterance)."""
    input:
        data="results/data/{split}.jsonl",
        script="scripts/baseline.py",
        code="src/kdsum/baselines.py",
    output:
        "results/predictions/baseline/{name}/{split}.csv",
    wildcard_constraints:
        name="lead|longest",
    log:
        "results/logs/baseline/{name}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{name}/{split}.tsv"
    conda:
        "../envs/eval.yaml"
    shell:
        "python {input.script} --name {wildcards.name} --data {input.data} --out {output} > {log} 2>&1"


rule submission:
    """The competition's submission file (format of sample_submission.csv) from test predictions."""
    input:
        predictions="results/predictions/{model}/{variant}/test.csv",
        data="results/data/test.jsonl",
        script="scripts/make_submission.py",
    output:
        "results/predictions/{model}/{variant}/submission.csv",
    log:
        "results/logs/submission/{model}/{variant}.log",
    conda:
        "../envs/eval.yaml"
    shell:
        "python {input.script} --predictions {input.predictions} --data {input.data} --out {output} > {log} 2>&1"
