"""Faults a user meets beyond hostile files: non-finite numbers in the config, a diverging training run, system
faults (disk full, read-only or unreadable paths, a FIFO as input) and files as users have them (long fields,
UTF-16, per-split encodings, test files without summaries, fnames with blanks). Each is one line, exit 2, and
nothing half-written (docs/RELIABILITY.md)."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdsum.config.files import ConfigError, deep_merge, merged_config
from kdsum.config.resolve import load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((ROOT / "tests" / "fixtures").glob("config.*.yaml"))
NON_FINITE = (float("nan"), float("inf"), float("-inf"))


# ------------------------------------------------------------------------------------------------ finite numbers
def numeric_leaves(value, path=()):
    """Every (path, number) leaf of a parsed YAML document; path items are keys or list indices."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in numeric_leaves(v, (*path, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in numeric_leaves(v, (*path, i))]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return [(path, value)] if is_number else []


def key_of(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def overlay_setting(config: dict, path, value) -> dict:
    """The smallest overlay that sets ``path`` to ``value``: the mapping down to it (a list is replaced whole)."""
    head = next((i for i, p in enumerate(path) if isinstance(p, int)), len(path))
    node = config
    for p in path[:head]:
        node = node[p]
    if head < len(path):  # a list element: the overlay carries the list with that element changed
        node = copy.deepcopy(node)
        inner = node
        for p in path[head:-1]:
            inner = inner[p]
        inner[path[-1]] = value
    else:
        node = value
    for p in reversed(path[:head]):
        node = {p: node}
    return node


def _leaves() -> list:
    """The numeric leaves of config.yaml merged with each test overlay (the union, once per key)."""
    seen = {}
    for overlay in [None, *OVERLAYS]:
        files = [ROOT / "config.yaml", *([overlay] if overlay else [])]
        config = merged_config(files)
        for path, _ in numeric_leaves(config):
            seen.setdefault(key_of(path), (files, path))
    return sorted(seen.items())


LEAVES = _leaves()


def test_the_walk_covers_every_section():
    sections = {files_path[1][0] for _, files_path in LEAVES}
    assert {"defaults", "models", "variants", "decoding", "resources"} <= sections, sections
    assert len(LEAVES) > 50


@functools.cache
def _merged(files: tuple) -> dict:
    return merged_config(files)


@pytest.mark.parametrize(("key", "where"), LEAVES, ids=[k for k, _ in LEAVES])
def test_a_non_finite_number_is_refused_at_load_naming_its_key(key, where):
    files, path = where
    config = _merged(tuple(files))
    for value in NON_FINITE:
        # as an overlay file holds it: YAML's own spelling (.nan, .inf, -.inf), read back, merged on top
        text = yaml.safe_dump(overlay_setting(config, path, value))
        assert (".nan" if value != value else ".inf") in text
        with pytest.raises(ConfigError) as err:
            validate_config(deep_merge(config, yaml.safe_load(text)), source="overlay.yaml")
        assert str(err.value) == f"overlay.yaml: invalid value at key '{key}': {value} is not a finite number"


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN", ".Inf"])
def test_a_non_finite_override_is_refused(text):
    # Snakemake's --config: a top-level key=value, or a nested mapping whose scalars arrive as strings
    flat = {"models__tiny-llama__train__learning_rate": yaml.safe_load(text)}
    nested = {"models": {"tiny-llama": {"train": {"learning_rate": text}}}}
    for overrides in (flat, nested):
        with pytest.raises(ConfigError, match=r"key 'models.tiny-llama.train.learning_rate': .* not a finite number"):
            load_config(ROOT / "config.yaml", overrides)


def test_the_cli_refuses_an_inf_learning_rate_in_one_line(tmp_path):
    overlay = tmp_path / "inf.yaml"
    overlay.write_text("defaults:\n  train:\n    learning_rate: .inf\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "kdsum", "spec", "--configfile", "config.yaml", "--configfile", str(overlay)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: config.yaml + {overlay}: invalid value at key 'defaults.train.learning_rate': inf is not a finite number"
    ]


@pytest.mark.parametrize(("value", "ok"), [(0, True), (1, True), (7, True), (0.5, True), (1.0, False), (2.0, False)])
def test_warmup_steps_is_whole_steps_as_an_integer_or_a_share_below_one(value, ok):
    overrides = {"defaults__train__warmup_steps": value}
    if ok:
        assert load_config(ROOT / "config.yaml", overrides)["defaults"]["train"]["warmup_steps"] == value
        return
    with pytest.raises(ConfigError, match=r"key 'defaults.train.warmup_steps': .*1.0 is refused as ambiguous"):
        load_config(ROOT / "config.yaml", overrides)
