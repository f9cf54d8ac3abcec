# kdsum: Korean dialogue summarization, from raw dialogues to results/summary.csv.
#   snakemake --cores 1 results/summary.csv
#   snakemake --cores 1 results/summary.csv --configfile my.yaml          (an overlay on config.yaml)
#   snakemake --cores 1 results/summary.csv --config models__tiny-llama__train__learning_rate=0.05   (__ for nesting)
# The rules are the one description of the pipeline: dvc.yaml is derived from them (`kdsum dvc-yaml`).
# Each rule runs one `kdsum <stage>` command (src/kdsum/stages); the logic lives in src/kdsum (docs/ARCHITECTURE.md).


configfile: "config.yaml"


report: "docs/report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/prompts.smk"
include: "rules/models.smk"
include: "rules/replicas.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/export.smk"
include: "rules/ensemble.smk"
include: "rules/evaluate.smk"
include: "rules/selection.smk"
include: "rules/summary.smk"
include: "rules/report.smk"
include: "rules/dag.smk"


rule all:
    default_target: True
    input:
        "results/summary.csv",
        report_targets(),
        submission_targets(),
