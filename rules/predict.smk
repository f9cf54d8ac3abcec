rule predict:
    """Summaries of one split by a fine-tuned model, or by the base model for the zero-shot variant
    (batched, length-sorted, settings from the spec)."""
    input:
        prompts=prompts_dir,
        weights=weights,
        checkpoint=checkpoint_input,
        decoding=decoding_input,
        spec=model_spec,
        code=code("predict"),
    output:
        "results/predictions/{model}/{variant}/{split}.csv",
    log:
        "results/logs/predict/{model}/{variant}/{split}.log",
    benchmark:
        "results/benchmarks/predict/{model}/{variant}/{split}.tsv"
    conda:
        "../envs/kdsum.yaml"
    threads: threads_for("predict")
    resources:
        **resources_for("predict"),
    params:
        weights=weights_args,
        decoding=decoding_args,
    shell:
        "kdsum predict --spec {input.spec:q} --split {wildcards.split:q} --prompts-dir {input.prompts:q} "
        "{params.weights:q} {params.decoding:q} --out {output:q} > {log:q} 2>&1"


rule baseline:
    """Cheap non-neural reference systems (lead, longest utterance)."""
    input:
        data="results/data/{split}.jsonl",
        code=code("baseline"),
    output:
        "results/predictions/baseline/{baseline}/{split}.csv",
    log:
        "results/logs/baseline/{baseline}/{split}.log",
    benchmark:
        "results/benchmarks/baseline/{baseline}/{split}.tsv"
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum baseline --name {wildcards.baseline:q} --data {input.data:q} --out {output:q} > {log:q} 2>&1"


rule submission:
    """The competition's submission file (format of sample_submission.csv) from test predictions."""
    input:
        predictions="results/predictions/{model}/{variant}/test.csv",
        data="results/data/test.jsonl",
        code=code("submission"),
    output:
        "results/predictions/{model}/{variant}/submission.csv",
    log:
        "results/logs/submission/{model}/{variant}.log",
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum submission --predictions {input.predictions:q} --data {input.data:q} --out {output:q} > {log:q} 2>&1"
