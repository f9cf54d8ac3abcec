# Selection on the dev set's tuning rows (kdsum.selection.tuning), reported on its report rows: checkpoints
# (train.select_checkpoints) and decoding settings (decoding.grid). kdsum.selection.select.
# The two choices are Snakemake checkpoints: the jobs reading a choice (predict, decode) are decided again after it
# is written, by its content, so a rerun of the selection (e.g. after a change of the scorer) that makes the same
# choice reruns no generation. DVC compares content anyway.


checkpoint select_checkpoint:
    """Score every candidate checkpoint on the dev tuning rows; the best becomes the system's model (checkpoint.json
    names it among the training outputs: no copy, so a rerun choosing the same one rewrites the same small file)."""
    input:
        prompts=prompts_dir,
        base=base_dir,
        candidates="results/train/{model}/{variant}/candidates",
        final="results/train/{model}/{variant}/model",
        history="results/train/{model}/{variant}/log_history.csv",
        references="results/data/dev.jsonl",
        spec=model_spec,
        evaluation=spec_file("evaluation"),
        code=code("select-checkpoint"),
    output:
        choice="results/selection/{model}/{variant}/checkpoint.json",
        table="results/selection/{model}/{variant}/checkpoints.csv",
        plot=report("results/selection/{model}/{variant}/checkpoints.png", category="Selection"),
    log:
        "results/logs/select_checkpoint/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/select_checkpoint/{model}/{variant}.tsv"
    conda:
        "../envs/kdsum.yaml"
    threads: threads_for("predict")
    resources:
        **resources_for("predict"),
    params:
        base=base_args,
        token_cache=TOKEN_CACHE,
    shell:
        "kdsum select-checkpoint --spec {input.spec:q} --evaluation-spec {input.evaluation:q} "
        "--prompts-dir {input.prompts:q} --references {input.references:q} --candidates {input.candidates:q} "
        "--final-model {input.final:q} --log-history {input.history:q} {params.base:q} "
        "--token-cache {params.token_cache:q} --out-choice {output.choice:q} --out-csv {output.table:q} "
        "--plot {output.plot:q} > {log:q} 2>&1"


rule decode:
    """One decoding setting: the system's summaries of the dev tuning rows (its own job; scored by evaluate_decoding)."""
    input:
        prompts=prompts_dir,
        weights=weights,
        checkpoint=checkpoint_input,
        references="results/data/dev.jsonl",
        spec=spec_file("decode/{model}/{variant}/{setting}"),
        evaluation=spec_file("evaluation"),
        code=code("decode"),
    output:
        predictions="results/selection/{model}/{variant}/decoding/{setting}/tuning.csv",
    log:
        "results/logs/decode/{model}/{variant}/{setting}.log",
    benchmark:
        "results/benchmarks/decode/{model}/{variant}/{setting}.tsv"
    wildcard_constraints:
        setting=one_of(DECODING) or "none",
    conda:
        "../envs/kdsum.yaml"
    threads: threads_for("predict")
    resources:
        **resources_for("predict"),
    params:
        weights=weights_args,
    shell:
        "kdsum decode --spec {input.spec:q} --evaluation-spec {input.evaluation:q} --prompts-dir {input.prompts:q} "
        "--references {input.references:q} {params.weights:q} --out-predictions {output.predictions:q} > {log:q} 2>&1"


rule evaluate_decoding:
    """The score of one decoding setting on the dev tuning rows (a change of the scorer reruns this, not decode)."""
    input:
        predictions="results/selection/{model}/{variant}/decoding/{setting}/tuning.csv",
        references="results/data/dev.jsonl",
        spec=spec_file("evaluation"),
        code=code("evaluate"),
    output:
        score="results/selection/{model}/{variant}/decoding/{setting}/score.json",
        per_item="results/selection/{model}/{variant}/decoding/{setting}/items.csv",
    log:
        "results/logs/evaluate_decoding/{model}/{variant}/{setting}.log",
    benchmark:
        "results/benchmarks/evaluate_decoding/{model}/{variant}/{setting}.tsv"
    wildcard_constraints:
        setting=one_of(DECODING) or "none",
    conda:
        "../envs/kdsum.yaml"
    params:
        token_cache=TOKEN_CACHE,
    shell:
        "kdsum evaluate --spec {input.spec:q} --predictions {input.predictions:q} --part tuning "
        "--references {input.references:q} --out-json {output.score:q} --out-items {output.per_item:q} "
        "--token-cache {params.token_cache:q} > {log:q} 2>&1"


checkpoint select_decoding:
    """The best decoding setting on the dev tuning rows: used for the system's dev and test predictions."""
    input:
        scores=expand("results/selection/{{model}}/{{variant}}/decoding/{setting}/score.json", setting=DECODING),
        specs=decode_specs,
        code=code("select-decoding"),
    output:
        choice="results/selection/{model}/{variant}/decoding.json",
        table="results/selection/{model}/{variant}/decoding.csv",
        md="results/selection/{model}/{variant}/decoding.md",
        plot=report("results/selection/{model}/{variant}/decoding.png", category="Selection"),
    log:
        "results/logs/select_decoding/{model}/{variant}.log",
    benchmark:
        "results/benchmarks/select_decoding/{model}/{variant}.tsv"
    conda:
        "../envs/kdsum.yaml"
    params:
        names=DECODING,
    shell:
        "kdsum select-decoding --names {params.names:q} --scores {input.scores:q} --specs {input.specs:q} "
        "--out-json {output.choice:q} --out-csv {output.table:q} --out-md {output.md:q} --plot {output.plot:q} "
        "> {log:q} 2>&1"


rule evaluate_report:
    """The score of a fine-tuned system's selected settings on the dev report rows only (never the tuning rows)."""
    input:
        predictions="results/predictions/{model}/{variant}/{split}.csv",
        references="results/data/{split}.jsonl",
        spec=spec_file("evaluation"),
        code=code("evaluate"),
        # after the whole file's scoring, whose morphemes of these predictions it then reads from the cache
        scored="results/scores/{model}/{variant}/{split}.json",
    output:
        scores="results/scores/{model}/{variant}/{split}-report.json",
        per_item="results/scores/{model}/{variant}/{split}-report_items.csv",
    log:
        "results/logs/evaluate_report/{model}/{variant}/{split}.log",
    benchmark:
        "results/benchmarks/evaluate_report/{model}/{variant}/{split}.tsv"
    conda:
        "../envs/kdsum.yaml"
    params:
        token_cache=TOKEN_CACHE,
    shell:
        "kdsum evaluate --spec {input.spec:q} --predictions {input.predictions:q} --part report "
        "--references {input.references:q} --out-json {output.scores:q} --out-items {output.per_item:q} "
        "--token-cache {params.token_cache:q} > {log:q} 2>&1"
