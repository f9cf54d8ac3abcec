"""Load, validate and resolve the pipeline configuration.

One validator serves Snakemake (``rules/common.smk``) and the CLIs that DVC calls, so both front doors refuse
the same bad config with the same message, naming the offending key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "schemas" / "config.schema.yaml"

ZERO_SHOT = "zeroshot"          # reserved variant name: the base model without fine-tuning
BASELINE_MODEL = "baseline"     # reserved model name: non-neural reference systems
SLUG_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"
SETTING_KEYS = ("prompt_format", "train", "lora", "quantization", "generation")


class ConfigError(ValueError):
    """A config file that the pipeline refuses; the message names the file and key."""


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that also fills in ``default:`` values (as Snakemake's validate does)."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = jsonschema.validators.extend(base, {"properties": set_defaults})
    return cls(schema)


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate ``config`` in place against the schema (filling defaults) and check cross-references.

    Raises ConfigError naming ``source`` and the dotted key of the first problem.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(config).__name__}")
    validator = _validator_with_defaults(load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        err = errors[0]
        key = _key_path(err.path)
        message = err.message
        if err.validator == "additionalProperties":
            message = f"unknown key ({err.message})"
        elif err.validator == "pattern" and err.validator_value == SLUG_PATTERN:
            message = f"{err.message}: names must be slugs (lowercase letters, digits and single hyphens)"
        elif err.validator == "not" and len(err.path) == 1:
            message = f"{err.instance!r} is a reserved name (zeroshot and baseline are used by the pipeline)"
        elif err.validator == "oneOf" and len(err.path) == 2 and err.path[0] == "models":
            message = "a model needs exactly one of `source` (hub id or local path) or `build` (built offline)"
        raise ConfigError(f"{source}: invalid value at key '{key}': {message}")
    _check_references(config, source)
    return config


def _check_references(config: dict, source: str) -> None:
    models, variants, formats = config["models"], config["variants"], config["prompt"]["formats"]
    for i, name in enumerate(config["run"]["models"]):
        if name not in models:
            raise ConfigError(
                f"{source}: key 'run.models[{i}]' names unknown model '{name}' (known: {', '.join(sorted(models))})"
            )
    for i, name in enumerate(config["run"]["variants"]):
        if name not in variants:
            raise ConfigError(
                f"{source}: key 'run.variants[{i}]' names unknown variant '{name}' "
                f"(known: {', '.join(sorted(variants))})"
            )
    fmt_keys = [("defaults.prompt_format", config["defaults"]["prompt_format"])]
    fmt_keys += [(f"models.{m}.prompt_format", e["prompt_format"]) for m, e in models.items() if "prompt_format" in e]
    fmt_keys += [(f"variants.{v}.prompt_format", e["prompt_format"]) for v, e in variants.items() if "prompt_format" in e]
    for key, fmt in fmt_keys:
        if fmt not in formats:
            raise ConfigError(f"{source}: key '{key}' names unknown prompt format '{fmt}' (known: {', '.join(formats)})")
    for name, entry in models.items():
        if entry["method"] != "full" and entry["family"] == "seq2seq":
            raise ConfigError(f"{source}: key 'models.{name}.method': seq2seq models are fully fine-tuned; use `full`")
        if entry["method"] == "full" and entry["family"] == "causal":
            raise ConfigError(f"{source}: key 'models.{name}.method': causal models train `lora` or `qlora` adapters")
        if "build" in entry:
            need = ("d_model", "ffn_dim") if entry["family"] == "seq2seq" else ("hidden_size", "intermediate_size")
            for k in need + ("vocab_size", "layers", "heads"):
                if k not in entry["build"]:
                    raise ConfigError(f"{source}: key 'models.{name}.build.{k}' is required for a {entry['family']} build")


def load_config(path: str | os.PathLike = "config.yaml") -> dict:
    """Read and validate a config file; errors name the file and key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return validate_config(config, source=str(path))


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_applies(config: dict, model: str, variant: str) -> bool:
    families = config["variants"][variant].get("families")
    return families is None or config["models"][model]["family"] in families


def resolve(config: dict, model: str, variant: str = "default") -> dict:
    """The full settings of one job: defaults <- model entry <- variant overrides.

    ``variant == "zeroshot"`` gives the model's own settings (no variant), used to generate without fine-tuning.
    """
    if model not in config["models"]:
        raise ConfigError(f"unknown model '{model}' (known: {', '.join(sorted(config['models']))})")
    entry = config["models"][model]
    spec = {k: copy.deepcopy(config["defaults"][k]) for k in SETTING_KEYS}
    spec = deep_merge(spec, {k: entry[k] for k in SETTING_KEYS if k in entry})
    if variant != ZERO_SHOT:
        if variant not in config["variants"]:
            raise ConfigError(f"unknown variant '{variant}' (known: {', '.join(sorted(config['variants']))})")
        if not variant_applies(config, model, variant):
            raise ConfigError(f"variant '{variant}' does not apply to {entry['family']} model '{model}'")
        overrides = {k: v for k, v in config["variants"][variant].items() if k != "families"}
        spec = deep_merge(spec, overrides)
    spec.update(
        name=model,
        variant=variant,
        family=entry["family"],
        method=entry["method"],
        source=entry.get("source"),
        build=copy.deepcopy(entry.get("build")),
    )
    spec["prompt"] = copy.deepcopy(config["prompt"]["formats"][spec["prompt_format"]])
    return spec


def grid(config: dict) -> list[tuple[str, str]]:
    """The (model, variant) training jobs that the run section selects."""
    return [
        (m, v)
        for m in config["run"]["models"]
        for v in config["run"]["variants"]
        if variant_applies(config, m, v)
    ]
