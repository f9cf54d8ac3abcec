# The merged config, its typed job specs and the input functions of the rules.
import functools
import os
import re
import sys
from pathlib import Path

from kdsum.config.resolve import (
    ZERO_SHOT,
    BASELINE_MODEL,
    ENSEMBLE_MODEL,
    REPLICAS,
    decoding_settings,
    grid,
    load_config,
    predict_splits,
    rule_resources,
    scored_splits,
    systems,
)
from kdsum.config.catalog import spec_for, spec_names
from kdsum.config.files import ConfigError
from kdsum.config.spec import to_json
from kdsum.workflow.deps import code_path, write_code_files
from kdsum.workflow.specs import is_preview, spec_path, unsynced, write_specs

# config.yaml, then --configfile overlays, then --config key=value overrides (dotted keys reach nested settings);
# validated against schemas/config.schema.yaml, every error naming the key.
CONFIG_FILES = list(dict.fromkeys(["config.yaml", *(os.path.relpath(f) for f in workflow.overwrite_configfiles)]))
# the last config validated here is kept: the same one again skips the schema check (kdsum.config.resolve)
CFG = load_config(CONFIG_FILES, workflow.config_settings.config, cache=".snakemake/kdsum-config.json")
MODELS = CFG["run"]["models"]
# not an output: content-keyed morphemes shared by the scoring jobs (kdsum.scoring.token_cache)
TOKEN_CACHE = "results/cache/morphemes"
GRID = grid(CFG)
# the decoding search's settings; selection needs the dev set's references (kdsum.selection.tuning)
DECODING = decoding_settings(CFG) if scored_splits(CFG) else []


def run_overlays():
    """The run's --configfile overlays, as a command line takes them."""
    return " ".join(["--configfile", *CONFIG_FILES[1:]]) if CONFIG_FILES[1:] else ""


def report_refusal():
    """Why `snakemake --report` cannot describe this config's run (one line), or None: results/summary.csv is not
    built, or a spec file of the run holds other settings than this config's (the run had other --configfile /
    --config). Checked before the spec files are written, so a refused report changes none."""
    if not os.path.isfile("results/summary.csv"):
        build = f"snakemake --cores N results/summary.csv {run_overlays()}"
        return f"snakemake --report needs the run's results/summary.csv: {build}"
    differ = [n for n in spec_names(CFG) if not same_text(spec_path(n), to_json(spec_for(CFG, n)))]
    if not differ:
        return None
    return (
        f"snakemake --report: results/ holds a run of other settings than {' + '.join(CONFIG_FILES)} "
        f"({len(differ)} spec file(s) differ, first {spec_path(differ[0])}); give --report the --configfile / "
        "--config of the run that made it"
    )


def same_text(path, text):
    try:
        return Path(path).read_text(encoding="utf-8") == text
    except FileNotFoundError:
        return False


# `snakemake --report` reads what the run built: refused in one line, before any file is written, where the config
# is not the run's
REPORT_ONLY = any(a == "--report" or a.startswith("--report=") for a in sys.argv)
if REPORT_ONLY and (message := report_refusal()):
    sys.exit(message)
# DVC-made results need Snakemake's records first (one line naming `kdsum sync-mtimes`); then every job's spec is
# written, each file only when its content changed: the rules take them as plain inputs, so a changed setting
# reruns exactly the jobs whose spec changed, whichever engine ran them before (kdsum.workflow.specs).
# A preview (`snakemake -n` ...) leaves results/specs as it is: a changed spec goes to a file of its own.
if message := unsynced():
    sys.exit(message)  # stderr, exit 1: one line, before anything is planned
SPECS = write_specs(CFG, preview=is_preview(sys.argv))
# each stage's code file (the files it runs, with their hashes), by the same rule (kdsum.workflow.deps)
CODE = write_code_files(preview=is_preview(sys.argv))


def one_of(names):
    return "|".join(re.escape(n) for n in names)


wildcard_constraints:
    model=one_of(CFG["models"]),
    variant=one_of([*CFG["variants"], ZERO_SHOT]),
    baseline=one_of(CFG["baselines"]) or "lead",
    split="train|dev|test",
    prompt_set="seq2seq|chat-[a-z0-9-]+",
    ensemble=one_of(CFG["ensembles"]) or "none",


def code(stage):
    """The code file of `kdsum <stage>` (the files it runs, with their hashes): a rule input, so a change of that
    code reruns the stage (and DVC lists the same file)."""
    return CODE.get(stage, code_path(stage))


def threads_for(rule):
    """A heavy rule's threads and resources come from config `resources` (cluster profiles read them)."""
    return rule_resources(CFG, rule)[0]


def resources_for(rule):
    return rule_resources(CFG, rule)[1]


def spec_input(name):
    """The spec file a job reads (the preview's copy where a preview changed it)."""
    return SPECS.get(name, spec_path(name))


def spec_file(pattern):
    """An input function: the spec called ``pattern`` with the job's wildcards filled in."""
    return lambda wildcards: spec_input(pattern.format(**dict(wildcards.items())))


def decode_specs(wildcards):
    return [spec_input(f"decode/{wildcards.model}/{wildcards.variant}/{s}") for s in DECODING]


def model_spec(wildcards):
    return spec_input(f"model/{wildcards.model}/{wildcards.variant}")


def job(wildcards):
    """The system's resolved job (frozen); resolved once per system, since the DAG asks for it in many rules."""
    return _job(f"model/{wildcards.model}/{wildcards.variant}")


@functools.cache
def _job(name):
    return spec_for(CFG, name)


def train_resources():
    """The train rule's resources from config `resources.train`, except gpu (per job: :func:`train_gpus`)."""
    return {k: v for k, v in resources_for("train").items() if k != "gpu"}


def train_gpus(wildcards):
    """GPUs of a training job: config `resources.train.gpu` (per process) x its train.num_gpus (DDP ranks); the
    slots `kdsum train` claims, and what --resources gpu=N counts."""
    return resources_for("train").get("gpu", 1) * job(wildcards).train.num_gpus


def built(model):
    return "build" in CFG["models"][model]


def raw_data(wildcards):
    """The raw files of the config: inputs of ingest, so a missing one stops the run naming its key."""
    splits = spec_for(CFG, "data").splits()
    for split, path in splits.items():
        if not os.path.isfile(path):
            raise ConfigError(f"{' + '.join(CONFIG_FILES)}: key 'data.{split}': file not found: {path}")
    return splits


def data_splits():
    return list(spec_for(CFG, "data").splits())


def prompts_dir(wildcards):
    return f"results/prompts/{job(wildcards).prompt_set}"


def build_tokenizer(wildcards):
    """A built model's real tokenizer directory (build.tokenizer), an input: a changed tokenizer rebuilds the base."""
    tokenizer = spec_for(CFG, f"base/{wildcards.model}").build.tokenizer
    return [tokenizer] if tokenizer else []


def base_dir(wildcards):
    """A model built offline trains and predicts from its built directory, a hub model from its source (a rule
    input when it is a replica the pipeline writes)."""
    if built(wildcards.model):
        return [f"results/base/{wildcards.model}"]
    source = CFG["models"][wildcards.model]["source"]
    return [source] if source.startswith(REPLICAS) else []


def replica_tokenizer(wildcards):
    """The real tokenizer a replica copies (none for KoBART's, which is trained): an input, so a replica is rebuilt
    when `replicas.tokenizers` points elsewhere."""
    from kdsum.models.replicas import SEEDS  # only when a replica is in the DAG

    family = SEEDS[wildcards.seed].tokenizer
    return [os.path.join(CFG["replicas"]["tokenizers"], family)] if family else []


def base_args(wildcards):
    return ["--base-dir", *base_dir(wildcards)] if built(wildcards.model) else []


def selects_checkpoint(wildcards):
    """A fine-tuned system whose model is its best checkpoint on the dev tuning rows (train.select_checkpoints)."""
    return (
        wildcards.variant != ZERO_SHOT
        and bool(scored_splits(CFG))
        and job(wildcards).train.select_checkpoints != "none"
    )


def checkpoint_choice(wildcards):
    return f"results/selection/{wildcards.model}/{wildcards.variant}/checkpoint.json"


def weights(wildcards):
    """The model a system generates with: the base, the final model, or the training candidates (the checkpoint
    search's choice, checkpoint_input, names the one to load, where training wrote it)."""
    if wildcards.variant == ZERO_SHOT:
        return base_dir(wildcards)
    train = f"results/train/{wildcards.model}/{wildcards.variant}"
    if selects_checkpoint(wildcards):
        return [f"{train}/candidates", f"{train}/model"]
    return [f"{train}/model"]


def checkpoint_input(wildcards):
    """checkpoint_choice through the Snakemake checkpoint: the readers are decided again after the selection ran,
    by the choice's content (an input of its own: the other inputs stay known while the selection is pending)."""
    if not selects_checkpoint(wildcards):
        return []
    return [checkpoints.select_checkpoint.get(**wildcards).output.choice]


def decoding_choice(wildcards):
    """The decoding search's choice that a fine-tuned system's predictions use (none without a search)."""
    if wildcards.variant == ZERO_SHOT or not DECODING:
        return []
    return [f"results/selection/{wildcards.model}/{wildcards.variant}/decoding.json"]


def decoding_input(wildcards):
    """decoding_choice through the checkpoint: a rerun search that chooses the same setting reruns no prediction."""
    if not decoding_choice(wildcards):
        return []
    return [checkpoints.select_decoding.get(**wildcards).output.choice]


def decoding_args(wildcards):
    return ["--decoding", *decoding_choice(wildcards)] if decoding_choice(wildcards) else []


def weights_args(wildcards):
    if wildcards.variant == ZERO_SHOT:
        return base_args(wildcards)
    if selects_checkpoint(wildcards):
        return ["--checkpoint", checkpoint_choice(wildcards)]
    return ["--model-dir", *weights(wildcards)]


def summary_spec():
    return spec_for(CFG, "summary")


def summary_inputs(wildcards):
    spec = summary_spec()
    scored = [s for s in spec.systems] if spec.split else []
    tuned = [s for s in spec.systems if s.kind == "fine-tuned"]
    inputs = {
        "scores": [f"results/scores/{s.model}/{s.variant}/{spec.split}.json" for s in scored],
        "train_metrics": [f"results/train/{s.model}/{s.variant}/train_metrics.json" for s in tuned],
        "log_histories": [f"results/train/{s.model}/{s.variant}/log_history.csv" for s in tuned],
        "base_metrics": [f"results/base/{s.model}.json" for s in spec.systems if s.kind == "zero-shot" and s.built],
        "item_scores": [f"results/scores/{s.model}/{s.variant}/{spec.split}_items.csv" for s in scored],
        # selection on the dev tuning rows, scores on its report rows (kdsum.selection.tuning)
        "report_scores": (
            [f"results/scores/{s.model}/{s.variant}/{spec.split}-report.json" for s in tuned] if spec.split else []
        ),
        "decodings": [f"results/selection/{s.model}/{s.variant}/decoding.json" for s in tuned] if spec.decoding else [],
    }
    # the best system's submission (rule best_submission), named in summary.md
    inputs["best_submission"] = ["results/submission.json"] if submission_candidates() else []
    if "test" in predict_splits(CFG):  # zero-shot rows are reference points, not submitted (buildable on demand)
        inputs["submissions"] = [
            (
                f"results/predictions/{s.model}/{s.variant}/submission.csv"
                if s.kind not in ("baseline", "ensemble")
                else f"results/predictions/{s.model}/{s.variant}/test.csv"
            )
            for s in spec.systems
            if s.kind != "zero-shot"
        ]
    return inputs


def submission_candidates():
    """The systems the best-system submission chooses among: every system of the summary but zero-shot ones (reference
    points); none unless a split is scored and test is predicted."""
    spec = summary_spec()
    if not spec.split or "test" not in predict_splits(CFG):
        return []
    return [s for s in spec.systems if s.kind != "zero-shot"]


def best_submission_inputs(wildcards):
    split, found = summary_spec().split, submission_candidates()
    return {
        "scores": [f"results/scores/{s.model}/{s.variant}/{split}.json" for s in found],
        "item_scores": [f"results/scores/{s.model}/{s.variant}/{split}_items.csv" for s in found],
        "predictions": [f"results/predictions/{s.model}/{s.variant}/test.csv" for s in found],
    }


def submission_targets():
    """results/submission.csv, when there is a system to choose (rule all)."""
    return ["results/submission.csv"] if submission_candidates() else []


def ensemble_spec(wildcards):
    return spec_input(f"{ENSEMBLE_MODEL}/{wildcards.ensemble}")


def ensemble_members(wildcards):
    """The member systems' predictions of the split, in the spec's order (its tie-break order)."""
    members = spec_for(CFG, f"{ENSEMBLE_MODEL}/{wildcards.ensemble}").systems
    return [f"results/predictions/{m}/{wildcards.split}.csv" for m in members]


def report_inputs(wildcards):
    spec = spec_for(CFG, "report")
    return {
        "data": f"results/data/{spec.split}.jsonl",
        "predictions": [f"results/predictions/{s.model}/{s.variant}/{spec.split}.csv" for s in spec.systems],
        "item_scores": [f"results/scores/{s.model}/{s.variant}/{spec.split}_items.csv" for s in spec.systems],
    }


def report_targets():
    """The examples page, when a split is scored (rule all); under `snakemake --report`, only when it is built (a
    run of results/summary.csv alone has none), with a line naming the command that builds it."""
    page = "results/report/examples.html"
    if not scored_splits(CFG):
        return []
    if REPORT_ONLY and not os.path.isfile(page):
        build = f"snakemake --cores 1 {page} {run_overlays()}"
        print(f"the examples page is not built, left out of the report: {build}", file=sys.stderr)
        return []
    return [page]
