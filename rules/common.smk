# Helpers shared by the rules: config loading/validation and the paths of the plan (src/kdsum/plan.py).
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kdsum import plan  # noqa: E402
from kdsum.config import BASELINE_MODEL, ZERO_SHOT, ConfigError, load_config, resolve  # noqa: E402


# The CLIs (and DVC) read the config *file*, so Snakemake must too: a `--config key=value` override would be seen
# by Snakemake alone. Use a complete config file instead (--configfile).
if workflow.config_settings.config:
    raise ConfigError(
        "--config key=value overrides are not supported: the pipeline's scripts and DVC read the config file. "
        "Copy config.yaml, edit it, and pass it with --configfile."
    )
CONFIG_PATH = (
    os.path.relpath(workflow.overwrite_configfiles[-1]) if workflow.overwrite_configfiles else "config.yaml"
)
CFG = load_config(CONFIG_PATH)  # validated against schemas/config.schema.yaml; errors name the key


wildcard_constraints:
    model="[a-z0-9]+(-[a-z0-9]+)*",
    variant="[a-z0-9]+(-[a-z0-9]+)*",
    split="train|dev|test",
    prompt_set="seq2seq|chat-[a-z0-9-]+",


def spec_of(wildcards):
    # rules without a {variant} wildcard (zero-shot) use the model's own settings
    return resolve(CFG, wildcards.model, getattr(wildcards, "variant", ZERO_SHOT))


def prompts_dir(wildcards):
    return plan.path("prompts", prompt_set=plan.prompt_set(spec_of(wildcards)))


def base_source(wildcards):
    """The built base directory, or the configured hub id / local path."""
    return plan.base_source(spec_of(wildcards))


def base_input(wildcards):
    """Only a built base is a file input; a hub id is not."""
    spec = spec_of(wildcards)
    return [plan.path("base", model=spec["name"])] if spec["build"] else []


def settings(wildcards):
    """The resolved settings of a job: a params rerun trigger for Snakemake (DVC tracks the same keys)."""
    return plan.settings_fingerprint(CFG, wildcards.model, wildcards.variant)


def base_prompts_dir(wildcards):
    spec = resolve(CFG, wildcards.model, ZERO_SHOT)
    return plan.path("prompts", prompt_set=plan.prompt_set(spec))


def raw_data():
    return {s: CFG["data"][s] for s in ("train", "dev", "test") if CFG["data"].get(s)}


def ingest_args():
    return " ".join(f"--{s} {p}" for s, p in raw_data().items())


def summary_inputs(wildcards):
    return plan.summary_inputs(CFG)
