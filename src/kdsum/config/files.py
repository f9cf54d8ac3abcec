"""Reading and merging config files: YAML without duplicate keys, overlays in order, then ``--config`` overrides
(Snakemake's keys cannot hold dots: ``run__models`` reaches ``run.models``). Validation is kdsum.config.resolve.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from kdsum.errors import KdsumError


class ConfigError(KdsumError):
    """A config the pipeline refuses; the message names the file and key."""


# ------------------------------------------------------------------------------------------------ YAML
# libyaml's parser where PyYAML was built with it: the same documents, several times faster (every workflow load
# reads config.yaml and the schema)
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(stream: Any) -> Any:
    return yaml.load(stream, Loader=SafeLoader)  # noqa: S506 (a safe loader)


class _UniqueKeyLoader(SafeLoader):
    """YAML's last-one-wins on a repeated key hides a typo: refuse it."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


# ------------------------------------------------------------------------------------------------ merging
def deep_merge(base: dict, override: Mapping, empty_replaces: bool = False) -> dict:
    """``override`` merged into ``base``: mappings key by key, any other value (a list too) replaced. With
    ``empty_replaces`` (config files and overrides: :func:`merged_config`) an empty mapping replaces as well, so that
    an overlay can turn a section off (``decoding: {grid: {}}``, ``ensembles: {}``); settings resolved from defaults,
    model and variant (kdsum.config.resolve) merge an empty mapping as nothing to change."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and (value or not empty_replaces) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value, empty_replaces)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _scalars_typed(value: Any) -> Any:
    """Snakemake's --config parses a nested value with YAML's BaseLoader, which keeps every scalar a string:
    give `{train: {learning_rate: 0.05}}` its number back (a string that reads as no other scalar stays one)."""
    if isinstance(value, Mapping):
        return {k: _scalars_typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scalars_typed(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, (bool, int, float)) or parsed is None else value
    return value


def nest_dotted(overrides: Mapping[str, Any]) -> dict:
    """``{"run.models": [...]}`` or ``{"run__models": [...]}`` (Snakemake's --config keys cannot hold dots)
    -> ``{"run": {"models": [...]}}``; keys without a separator stay as they are."""
    out: dict = {}
    for key, value in overrides.items():
        parts = str(key).replace("__", ".").split(".")
        value = _scalars_typed(value) if isinstance(value, (Mapping, list)) else value
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{part}' is set twice, once as a value")
        node[parts[-1]] = deep_merge(node.get(parts[-1], {}), value) if isinstance(value, Mapping) else value
    return out


def merged_config(files: Iterable[str | os.PathLike], overrides: Mapping[str, Any] | None = None) -> dict:
    """The config the engine sees: files merged in order, then overrides; an empty mapping or list replaces."""
    config: dict = {}
    for path in files:
        data = read_yaml(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
        config = deep_merge(config, data, empty_replaces=True)
    return deep_merge(config, nest_dotted(overrides or {}), empty_replaces=True)


# ------------------------------------------------------------------------------------------------ finite numbers
def _key(path: tuple[str, ...]) -> str:
    return "".join(p if p.startswith("[") else f".{p}" for p in path).lstrip(".") or "<top level>"


def non_finite_keys(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """(key, value) of every NaN or ±Inf number in ``value`` (keys as ``train.learning_rate``, ``x.seeds[1]``):
    YAML's ``.nan`` and ``.inf`` pass a schema's bounds (every comparison with NaN is false) and would reach
    training as a diverged run."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(_key(path), value)]
    if isinstance(value, Mapping):
        return [hit for key, v in value.items() for hit in non_finite_keys(v, (*path, str(key)))]
    if isinstance(value, list):
        return [hit for i, v in enumerate(value) for hit in non_finite_keys(v, (*path, f"[{i}]"))]
    return []


def refuse_non_finite(config: Any, source: str) -> None:
    """Refuse a config holding NaN or ±Inf anywhere (every section, overlays and overrides), naming the key."""
    bad = non_finite_keys(config)
    if bad:
        key, value = bad[0]
        raise ConfigError(f"{source}: invalid value at key '{key}': {value} is not a finite number")
