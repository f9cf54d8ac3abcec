rule mbr:
    """An ensemble's summaries of one split: per dialogue, the member system's summary with the highest mean ROUGE
    against the other members' (kdsum.selection.mbr); evaluated and summarised like any system."""
    input:
        candidates=ensemble_members,
        spec=ensemble_spec,
        code=code("mbr"),
    output:
        "results/predictions/ensemble/{ensemble}/{split}.csv",
    log:
        "results/logs/mbr/{ensemble}/{split}.log",
    benchmark:
        "results/benchmarks/mbr/{ensemble}/{split}.tsv"
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum mbr --spec {input.spec:q} --candidates {input.candidates:q} --out {output:q} > {log:q} 2>&1"
