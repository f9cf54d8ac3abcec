# A spec job writes one small JSON file in well under a second: under a cluster executor it runs on the submit
# host rather than waiting in the queue as a job of its own.
localrules:
    spec,


rule spec:
    """One job's resolved settings (kdsum.config.spec), the only config its stages read. Its params are the spec itself:
    a config change reruns exactly the jobs whose spec changed. DVC's stage reads config.yaml instead (kdsum.workflow.dvc)."""
    input:
        code=code("spec"),
        schema="schemas/config.schema.yaml",
    output:
        "results/specs/{name}.json",
    params:
        spec=lambda wildcards: to_json(spec_for(CFG, wildcards.name)),
        dvc_params=lambda wildcards: spec_keys(CFG, wildcards.name),
    log:
        "results/logs/spec/{name}.log",
    conda:
        "../envs/kdsum.yaml"
    shell:
        "kdsum spec {wildcards.name:q} --json {params.spec:q} --out {output:q} > {log:q} 2>&1"
