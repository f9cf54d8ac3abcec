# kdsum: Korean dialogue summarization, from raw dialogues to results/summary.csv.
#   snakemake --cores 1 results/summary.csv          (the default target)
#   snakemake --cores 1 --configfile my.yaml ...      (another complete config file)
# Rules are thin: the logic lives in src/kdsum, the commands are scripts/*.py, which DVC (dvc.yaml) calls too.

configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/prompts.smk"
include: "rules/models.smk"
include: "rules/train.smk"
include: "rules/predict.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/dag.smk"


rule all:
    input:
        "results/summary.csv",
    default_target: True
