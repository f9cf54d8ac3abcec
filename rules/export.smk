rule export:
    """A fine-tuned system as one self-contained 16-bit Hugging Face model directory (adapter merged, tokenizer
    with its data tokens and chat template, generation config with the end ids); not in the default target:
    `snakemake results/export/M/V`."""
    input:
        weights=weights,
        checkpoint=checkpoint_input,
        decoding=decoding_input,
        spec=model_spec,
        code=code("export"),
    output:
        directory("results/export/{model}/{variant}"),
    log:
        "results/logs/export/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/export/{model}/{variant}.tsv"
    conda:
        "../envs/kdsum.yaml"
    threads: threads_for("predict")
    resources:
        **resources_for("predict"),
    params:
        weights=weights_args,
        decoding=decoding_args,
    shell:
        "kdsum export --spec {input.spec:q} {params.weights:q} {params.decoding:q} --out {output:q} > {log:q} 2>&1"
