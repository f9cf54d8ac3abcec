"""Load, validate and resolve the pipeline configuration into typed job specs (kdsum.config.spec).

The config is config.yaml, then any overlay files (``--configfile``), then ``key=value`` overrides (Snakemake's
``--config``, whose keys cannot hold dots: ``run__models=[tiny-llama]`` reaches ``run.models``, as does
``'run={models: [tiny-llama]}'``). The schema
(schemas/config.schema.yaml; its settings sections are written from kdsum.config.spec by kdsum.config.schema) checks
every key; the leaves of ``defaults`` are all required there, so each setting is defaulted in exactly one place. Only the ``spec`` stage reads the config; every other stage reads its spec.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kdsum.config.files import ConfigError, deep_merge, merged_config, refuse_non_finite, safe_load
from kdsum.config.schema import SCHEMA_PATH, SECTION_TYPES
from kdsum.config.spec import (
    BASELINE_MODEL,
    ENSEMBLE_MODEL,
    ZERO_SHOT,
    BatchError,
    BuildArgs,
    GenerationArgs,
    Job,
    PromptFormat,
    SystemRow,
    per_rank_accumulation,
)
from kdsum.io import write_text

DEFAULT_CONFIG = "config.yaml"
SLUG_PATTERN = "^[a-z0-9]+(-[a-z0-9]+)*$"
SETTING_KEYS = ("prompt_format", "train", "lora", "quantization", "generation")
ZERO_SHOT_KEYS = ("prompt_format", "quantization", "generation")  # a model's own settings that zero-shot reads
PREDICTION_TRAIN_KEYS = ("max_length", "bf16")  # the training settings that prediction reads


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        schema = safe_load(fh)
    # every leaf of `defaults` is required: a setting missing there is refused at load, not at training
    for section in SECTION_TYPES:
        sub = schema["properties"]["defaults"]["properties"][section]
        props = schema["$defs"][section]["properties"]
        sub["required"] = sorted(props)
    return schema


# ------------------------------------------------------------------------------------------------ validation
def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that also fills in ``default:`` values (as Snakemake's validate does)."""
    import jsonschema  # here: a config the cache vouches for needs none (most of a workflow load's own time)

    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    # an integer setting is an integer: 1.0 is refused (for warmup_steps it reads as one step or all of them)
    strict = base.TYPE_CHECKER.redefine("integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    return jsonschema.validators.extend(base, {"properties": set_defaults}, type_checker=strict)(schema)


def _similar(key: str, allowed: list[str]) -> list[str]:
    """Allowed keys a typo or an old name most likely meant (`epochs` -> `num_train_epochs`)."""
    return difflib.get_close_matches(key, allowed, 1) or [a for a in allowed if key in a or a in key][:1]


# keys a config may still carry from an earlier release: the one-line refusal names what replaces them
_REPLACED = {
    "allow_leakage": "'allow_leakage' is replaced by 'leakage: report | refuse | drop_train' (report, the default, "
    "accepts and records shared dialogues as allow_leakage: true did; refuse is allow_leakage: false)",
}


def _message(err) -> str:
    if err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in allowed]
        if replaced := [_REPLACED[k] for k in extra if k in _REPLACED]:
            return replaced[0]
        hints = [f"'{k}' (did you mean '{m[0]}'?)" if (m := _similar(k, allowed)) else f"'{k}'" for k in extra]
        return f"unknown key {', '.join(hints)}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required")
    if err.validator == "pattern" and err.validator_value == SLUG_PATTERN:
        return f"{err.message}: names must be slugs (lowercase letters, digits and single hyphens)"
    if err.validator == "not" and len(err.path) == 1:
        return f"{err.instance!r} is a reserved name (zeroshot, baseline and ensemble are used by the pipeline)"
    if err.validator == "oneOf" and len(err.path) == 2 and err.path[0] == "models":
        return "a model needs exactly one of `source` (hub id or local path) or `build` (built offline)"
    if err.validator in ("anyOf", "oneOf") and "description" in err.schema:
        return f"{err.message}: {err.schema['description']}"
    return err.message


def validate_config(config: Any, source: str = "config", cache: str | os.PathLike | None = None) -> dict:
    """Validate ``config`` in place against the schema (filling defaults) and check cross-references.

    ``cache``: a file holding the last config this schema and this code accepted, defaults filled in; the same
    config again skips the schema check (the cross-references, which look at the disk, are always checked)."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(config).__name__}")
    refuse_non_finite(config, source)
    key = _validation_key(config) if cache else None
    accepted = _read_accepted(cache, key) if key else None
    if accepted is None:
        _check_schema(config, source)
        if key:
            _write_accepted(cache, key, config)
    else:
        config.clear()
        config.update(accepted)
    _check_references(config, source)
    return config


def _validation_key(config: dict) -> str | None:
    """The config's content with the schema and the code that checks it; None for a config JSON cannot hold."""
    try:
        text = json.dumps(config, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    digest = hashlib.sha256(text.encode())
    for path in (__file__, Path(__file__).with_name("schema.py"), SCHEMA_PATH):
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _read_accepted(cache: str | os.PathLike, key: str) -> dict | None:
    try:
        entry = json.loads(Path(cache).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return entry.get("config") if isinstance(entry, dict) and entry.get("key") == key else None


def _write_accepted(cache: str | os.PathLike, key: str, config: dict) -> None:
    text = json.dumps({"key": key, "config": config}, ensure_ascii=False)
    if json.loads(text)["config"] != config:
        return  # JSON would change it (a non-string key): not cached
    try:
        write_text(cache, text)
    except OSError:
        pass  # a cache: a read-only or full disk only costs the next load the schema check


def _check_schema(config: dict, source: str) -> None:
    errors = sorted(
        _validator_with_defaults(load_schema()).iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path)))
    )
    if errors:
        err = errors[0]
        key = _key_path(err.path)
        if err.validator == "required":
            key = _key_path([*err.path, err.message.split("'")[1]])
        raise ConfigError(f"{source}: invalid value at key '{key}': {_message(err)}")


def _check_references(config: dict, source: str) -> None:
    models, variants, formats = config["models"], config["variants"], config["prompt"]["formats"]
    for section, known in (("models", models), ("variants", variants)):
        for i, name in enumerate(config["run"][section]):
            if name not in known:
                raise ConfigError(
                    f"{source}: key 'run.{section}[{i}]' names unknown {section[:-1]} '{name}' "
                    f"(known: {', '.join(sorted(known))})"
                )
    fmt_keys = [("defaults.prompt_format", config["defaults"]["prompt_format"])]
    fmt_keys += [(f"models.{m}.prompt_format", e["prompt_format"]) for m, e in models.items() if "prompt_format" in e]
    fmt_keys += [
        (f"variants.{v}.prompt_format", e["prompt_format"]) for v, e in variants.items() if "prompt_format" in e
    ]
    for key, fmt in fmt_keys:
        if fmt not in formats:
            raise ConfigError(
                f"{source}: key '{key}' names unknown prompt format '{fmt}' (known: {', '.join(formats)})"
            )
    for name, entry in models.items():
        if entry["method"] != "full" and entry["family"] == "seq2seq":
            raise ConfigError(f"{source}: key 'models.{name}.method': seq2seq models are fully fine-tuned; use `full`")
        if entry["method"] == "full" and entry["family"] == "causal":
            raise ConfigError(f"{source}: key 'models.{name}.method': causal models train `lora` or `qlora` adapters")
        if "build" in entry:
            need = ("d_model", "ffn_dim") if entry["family"] == "seq2seq" else ("hidden_size", "intermediate_size")
            if "tokenizer" in entry["build"] and entry["family"] == "seq2seq":
                raise ConfigError(f"{source}: key 'models.{name}.build.tokenizer': only a causal build takes one")
            vocab = () if "tokenizer" in entry["build"] else ("vocab_size",)  # the real tokenizer's own size
            for k in need + vocab + ("layers", "heads"):
                if k not in entry["build"]:
                    raise ConfigError(
                        f"{source}: key 'models.{name}.build.{k}' is required for a {entry['family']} build"
                    )
    for name, entry in config["ensembles"].items():
        for i, member in enumerate(entry["systems"]):
            model, _, variant = member.partition("/")
            known = (model == BASELINE_MODEL and variant in ("lead", "longest")) or (
                model in models and (variant == ZERO_SHOT or variant in variants)
            )
            if not known:
                raise ConfigError(
                    f"{source}: key 'ensembles.{name}.systems[{i}]': '{member}' is not a system name "
                    "(model/variant, model/zeroshot or baseline/lead|longest)"
                )
    for name, entry in models.items():
        if "source" in entry and (problem := _source_problem(entry["source"])):
            raise ConfigError(f"{source}: key 'models.{name}.source': {problem}")
    for (model, variant), setting in [(mv, None) for mv in grid(config)] + [
        (mv, d) for mv in grid(config) for d in decoding_settings(config)
    ]:
        settings = resolve_settings(config, model, variant)
        override = config["decoding"]["grid"][setting] if setting else {}
        max_length = settings["train"]["max_length"]
        new_tokens = override.get("max_new_tokens", settings["generation"]["max_new_tokens"])
        if models[model]["family"] == "causal" and max_length <= new_tokens:
            raise ConfigError(
                f"{source}: key 'train.max_length' ({max_length}) of models.{model} under variant "
                f"'{variant}' must exceed 'generation.max_new_tokens' ({new_tokens}"
                f"{f' of decoding.grid.{setting}' if setting else ''}): the summary "
                f"would leave no room for the dialogue"
            )
        try:
            per_rank_accumulation(settings["train"]["gradient_accumulation_steps"], settings["train"]["num_gpus"])
        except BatchError as exc:
            raise ConfigError(f"{source}: {exc} (models.{model} under variant '{variant}')") from None


REPLICAS = "results/replicas/"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _source_problem(value: str) -> str | None:
    """A local model directory (it must hold config.json) or a hub id (org/name); anything else is refused."""
    path = Path(value).expanduser()
    if value.startswith(REPLICAS) and not path.exists():
        return None  # a replica the `replica` rule writes (kdsum.models.replicas)
    if path.exists() or value.startswith(("/", ".", "~")):
        if not path.is_dir():
            return f"'{value}' is not a directory (a local model is a directory with config.json)"
        if not (path / "config.json").is_file():
            return f"'{value}' is a directory without config.json: not a model"
        return None
    if not HUB_ID.match(value):
        return f"'{value}' is neither a local model directory nor a hub id (org/name)"
    return None


def load_config(
    files: str | os.PathLike | Iterable[str | os.PathLike] = DEFAULT_CONFIG,
    overrides: Mapping[str, Any] | None = None,
    cache: str | os.PathLike | None = None,
) -> dict:
    """Read, merge and validate config files (+ overrides); errors name the file and key (``cache``:
    validate_config)."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    source = " + ".join(map(str, files)) + (" + overrides" if overrides else "")
    return validate_config(merged_config(files, overrides), source=source, cache=cache)


# ------------------------------------------------------------------------------------------------ resolution
def variant_applies(config: dict, model: str, variant: str) -> bool:
    families = config["variants"][variant].get("families")
    return families is None or config["models"][model]["family"] in families


def grid(config: dict) -> list[tuple[str, str]]:
    """The (model, variant) training jobs that the run section selects."""
    return [(m, v) for m in config["run"]["models"] for v in config["run"]["variants"] if variant_applies(config, m, v)]


def resolve_settings(config: dict, model: str, variant: str) -> dict:
    """defaults <- model entry <- variant overrides, as plain mappings (``zeroshot``: no variant)."""
    if model not in config["models"]:
        raise ConfigError(f"unknown model '{model}' (known: {', '.join(sorted(config['models']))})")
    entry = config["models"][model]
    settings = {k: copy.deepcopy(config["defaults"][k]) for k in SETTING_KEYS}
    if variant == ZERO_SHOT:  # no training: of the model's own settings, only those prediction reads
        own = {k: entry[k] for k in ZERO_SHOT_KEYS if k in entry}
        own["train"] = {k: v for k, v in entry.get("train", {}).items() if k in PREDICTION_TRAIN_KEYS}
        return deep_merge(settings, own)
    settings = deep_merge(settings, {k: entry[k] for k in SETTING_KEYS if k in entry})
    if variant != ZERO_SHOT:
        if variant not in config["variants"]:
            raise ConfigError(f"unknown variant '{variant}' (known: {', '.join(sorted(config['variants']))})")
        if not variant_applies(config, model, variant):
            raise ConfigError(f"variant '{variant}' does not apply to {entry['family']} model '{model}'")
        settings = deep_merge(settings, {k: v for k, v in config["variants"][variant].items() if k != "families"})
    return settings


def decoding_settings(config: dict) -> list[str]:
    """The decoding search's settings (``decoding.grid``), in config order; empty: no search."""
    return list(config.get("decoding", {}).get("grid", {}))


def resolve_decoding(config: dict, model: str, variant: str, setting: str) -> Job:
    """The job of one decoding setting: the model's own job with the setting's generation overrides on top."""
    grid_ = config.get("decoding", {}).get("grid", {})
    if setting not in grid_:
        raise ConfigError(f"unknown decoding setting '{setting}' (known: {', '.join(grid_) or 'none'})")
    if variant == ZERO_SHOT:
        raise ConfigError(f"decoding setting '{setting}': the decoding search is for fine-tuned systems")
    job = resolve(config, model, variant)
    generation = GenerationArgs(**deep_merge(dataclasses.asdict(job.generation), grid_[setting]))
    return dataclasses.replace(job, generation=generation)


def resolve_prompt_format(config: dict, name: str) -> PromptFormat:
    fmt = config["prompt"]["formats"][name]
    return PromptFormat(
        name=name,
        system=fmt["system"],
        question=fmt["question"],
        topic=fmt["topic"],
        enable_thinking=fmt["enable_thinking"],
    )


def resolve(config: dict, model: str, variant: str = "default") -> Job:
    """The typed spec of one job: a model under a variant, or ``zeroshot``."""
    s = resolve_settings(config, model, variant)
    entry = config["models"][model]
    family = entry["family"]
    return Job(
        model=model,
        variant=variant,
        family=family,
        method=entry["method"],
        source=entry.get("source"),
        build=BuildArgs(**entry["build"]) if entry.get("build") else None,
        prompt=resolve_prompt_format(config, s["prompt_format"]) if family == "causal" else None,
        **{k: cls(**s[k]) for k, cls in SECTION_TYPES.items()},
    )


def systems(config: dict) -> list[SystemRow]:
    """Every row of the summary: the single systems, then the ensembles of them."""
    return single_systems(config) + [
        SystemRow(
            name=f"{ENSEMBLE_MODEL}/{n}",
            model=ENSEMBLE_MODEL,
            variant=n,
            kind="ensemble",
            method=e["method"],
            source=" + ".join(e["systems"]),
        )
        for n, e in active_ensembles(config).items()
    ]


def active_ensembles(config: dict) -> dict:
    """The ensembles whose members are all systems of this run; like a variant for another family, an ensemble of
    a model left out of `run.models` is left out (not an error), so `run.models=[one-model]` still runs."""
    singles = {r.name for r in single_systems(config)}
    return {n: e for n, e in config["ensembles"].items() if singles.issuperset(e["systems"])}


def single_systems(config: dict) -> list[SystemRow]:
    """Trained (model, variant), zero-shot (model, 'zeroshot'), baselines: the systems that write summaries."""
    rows = []
    for m, v in grid(config) + (
        [(m, ZERO_SHOT) for m in config["run"]["models"]] if config["run"]["zero_shot"] else []
    ):
        e = config["models"][m]
        rows.append(
            SystemRow(
                name=f"{m}/{v}",
                model=m,
                variant=v,
                kind="zero-shot" if v == ZERO_SHOT else "fine-tuned",
                family=e["family"],
                method="none" if v == ZERO_SHOT else e["method"],
                source=e.get("source"),
                built="build" in e,
            )
        )
    rows += [
        SystemRow(name=f"{BASELINE_MODEL}/{b}", model=BASELINE_MODEL, variant=b, kind="baseline")
        for b in config["baselines"]
    ]
    return rows


def predict_splits(config: dict) -> list[str]:
    return [s for s in config["run"]["splits"] if config["data"].get(s)]


def scored_splits(config: dict) -> list[str]:
    # the competition's test split carries no references: predictions and a submission file only
    return [s for s in predict_splits(config) if s == "dev"]


def prompt_sets(config: dict) -> list[str]:
    jobs = [resolve(config, m, v) for m, v in grid(config)] + [
        resolve(config, m, ZERO_SHOT) for m in config["run"]["models"]
    ]
    return sorted({j.prompt_set for j in jobs})


def rule_resources(config: dict, rule: str) -> tuple[int, dict]:
    """A heavy rule's threads and scheduler resources (config `resources`: mem_mb, runtime in minutes, gpu), for its
    `threads:` and `resources:`; a cluster executor (profiles/slurm) turns them into its request. Resources are no
    rerun trigger, so changing them reruns nothing."""
    entry = config.get("resources", {}).get(rule)
    if entry is None:
        raise ConfigError(f"key 'resources.{rule}' is missing (config.yaml sets threads, mem_mb, runtime, gpu)")
    return entry["threads"], {k: v for k, v in entry.items() if k != "threads"}
