"""The spec files: which exist for a config (:func:`spec_names`), what each holds (:func:`spec_for`) and which
config keys it reads (:func:`spec_keys`, DVC's params of its spec stage). Resolution itself is kdsum.config.resolve.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kdsum.config.files import ConfigError
from kdsum.config.resolve import (
    PREDICTION_TRAIN_KEYS,
    ZERO_SHOT_KEYS,
    active_ensembles,
    decoding_settings,
    grid,
    prompt_sets,
    resolve,
    resolve_decoding,
    resolve_prompt_format,
    scored_splits,
    systems,
)
from kdsum.config.spec import (
    ENSEMBLE_MODEL,
    ZERO_SHOT,
    BaseSpec,
    BuildArgs,
    DataSpec,
    EnsembleSpec,
    EvaluationArgs,
    PromptSetSpec,
    ReportSpec,
    SummarySpec,
    prompt_set_name,
)


def spec_for(config: dict, name: str) -> Any:
    """The spec called ``name``: data | evaluation | summary | prompts/P | base/M | model/M/V."""
    parts = name.split("/")
    if name == "data":
        d = config["data"]
        return DataSpec(
            train=d["train"],
            dev=d.get("dev"),
            test=d.get("test"),
            encoding=d["encoding"],
            leakage=d["leakage"],
            near_duplicate_threshold=d["near_duplicate_threshold"],
        )
    if name == "evaluation":
        return EvaluationArgs(**config["evaluation"])
    if name == "summary":
        ev = config["evaluation"]
        split = (scored_splits(config) or [None])[0]
        return SummarySpec(
            split=split,
            systems=systems(config),
            bootstrap=ev["bootstrap"],
            seed=ev["seed"],
            decoding=decoding_settings(config) if split else [],
        )
    if name == "report" and scored_splits(config):
        return ReportSpec(split=scored_splits(config)[0], systems=systems(config), **config["report"])
    if parts[0] == ENSEMBLE_MODEL and len(parts) == 2 and parts[1] in active_ensembles(config):
        return EnsembleSpec(name=parts[1], **config["ensembles"][parts[1]])
    if parts[0] == "prompts" and len(parts) == 2:
        if parts[1] == "seq2seq":
            return PromptSetSpec(name="seq2seq", family="seq2seq", format=None)
        fmt = parts[1].removeprefix("chat-")
        if not parts[1].startswith("chat-") or fmt not in config["prompt"]["formats"]:
            raise ConfigError(f"unknown prompt set '{parts[1]}'")
        return PromptSetSpec(
            name=prompt_set_name("causal", fmt), family="causal", format=resolve_prompt_format(config, fmt)
        )
    if parts[0] == "base" and len(parts) == 2:
        entry = config["models"].get(parts[1])
        if not entry or "build" not in entry:
            raise ConfigError(f"model '{parts[1]}' has no `build` section: nothing to build")
        return BaseSpec(model=parts[1], family=entry["family"], build=BuildArgs(**entry["build"]))
    if parts[0] == "model" and len(parts) == 3:
        return resolve(config, parts[1], parts[2])
    if parts[0] == "decode" and len(parts) == 4:
        return resolve_decoding(config, *parts[1:])
    raise ConfigError(
        f"unknown spec '{name}' (data, evaluation, summary, report, ensemble/E, prompts/P, base/M, model/M/V, "
        "decode/M/V/S)"
    )


def spec_keys(config: dict, name: str) -> list[str]:
    """The config keys that spec ``name`` reads: its DVC params, so `dvc exp run -S` reruns exactly its jobs."""
    parts = name.split("/")
    if name in ("data", "evaluation"):
        return [name]
    if parts[0] == ENSEMBLE_MODEL:
        return [f"ensembles.{parts[1]}"]
    if parts[0] == "decode":
        return [*spec_keys(config, f"model/{parts[1]}/{parts[2]}"), f"decoding.grid.{parts[3]}"]
    if name in ("summary", "report"):
        extra = ["evaluation.bootstrap", "evaluation.seed", "decoding"] if name == "summary" else ["report"]
        return ["run", "baselines", "data", "ensembles", *extra] + [
            f"models.{m}.{k}"
            for m in config["run"]["models"]
            for k in ("family", "method", "source")
            if k in config["models"][m]
        ]
    if parts[0] == "prompts":
        return [] if parts[1] == "seq2seq" else [f"prompt.formats.{parts[1].removeprefix('chat-')}"]
    if parts[0] == "base":
        return [f"models.{parts[1]}.build", f"models.{parts[1]}.family"]
    model, variant = parts[1], parts[2]
    job, entry = resolve(config, model, variant), config["models"][model]
    fmt = [f"prompt.formats.{job.prompt.name}"] if job.prompt else []
    if variant != ZERO_SHOT:
        return [f"models.{model}", "defaults", f"variants.{variant}", *fmt]
    # exactly what resolve_settings reads for zero-shot: a training hyperparameter of the model reruns nothing here
    own = [k for k in ("family", "method", "source", "build", *ZERO_SHOT_KEYS) if k in entry]
    train = [k for k in PREDICTION_TRAIN_KEYS if k in entry.get("train", {})]
    return [f"models.{model}.{k}" for k in own] + [f"models.{model}.train.{k}" for k in train] + ["defaults", *fmt]


def spec_names(config: dict) -> list[str]:
    """Every spec the default target needs."""
    names = ["data", "summary"] + [f"prompts/{p}" for p in prompt_sets(config)]
    names += [f"base/{m}" for m in config["run"]["models"] if "build" in config["models"][m]]
    names += [f"model/{m}/{v}" for m, v in grid(config)]
    if config["run"]["zero_shot"]:
        names += [f"model/{m}/{ZERO_SHOT}" for m in config["run"]["models"]]
    names += [f"{ENSEMBLE_MODEL}/{e}" for e in active_ensembles(config)]
    if scored_splits(config):
        names += [f"decode/{m}/{v}/{d}" for m, v in grid(config) for d in decoding_settings(config)]
    return names + (["evaluation", "report"] if scored_splits(config) else [])


def as_plain(spec: Any) -> dict:
    return dataclasses.asdict(spec)
