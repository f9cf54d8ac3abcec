"""Overlays that turn things off: in a ``--configfile`` overlay (or a ``--config`` override) an empty mapping or a
list replaces what it overrides, so ``decoding: {grid: {}}`` drops the decoding search, ``ensembles: {}`` the
ensembles and ``run: {models: []}`` every model (a baselines-only summary); settings resolved from defaults, model
and variant still merge key by key."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from kdsum.config.files import deep_merge, merged_config
from kdsum.config.resolve import decoding_settings, grid, load_config, resolve, systems


def _overlay(tmp_path, text: str):
    path = tmp_path / "overlay.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_an_empty_mapping_replaces_and_a_full_one_merges(tmp_path, repo_root):
    base = yaml.safe_load((repo_root / "config.yaml").read_text(encoding="utf-8"))
    assert base["decoding"]["grid"] and base["ensembles"]  # the default has both
    overlay = _overlay(tmp_path, "decoding: {grid: {}}\nensembles: {}\nmodels: {tiny-llama: {train: {seed: 7}}}\n")
    merged = merged_config([repo_root / "config.yaml", overlay])
    assert merged["decoding"] == {"grid": {}} and merged["ensembles"] == {}
    # a non-empty mapping still merges: the model keeps every other setting of config.yaml
    assert merged["models"]["tiny-llama"]["train"] == {**base["models"]["tiny-llama"]["train"], "seed": 7}
    assert merged["models"]["tiny-bart"] == base["models"]["tiny-bart"]
    # the same through --config overrides (Snakemake's `__` keys)
    assert merged_config([repo_root / "config.yaml"], {"decoding__grid": {}})["decoding"]["grid"] == {}
    assert merged_config([repo_root / "config.yaml"], {"ensembles": {}})["ensembles"] == {}
    assert merged_config([repo_root / "config.yaml"], {"run__models": []})["run"]["models"] == []


def test_a_list_replaces_and_resolution_still_merges():
    assert deep_merge({"a": [1, 2], "b": {"c": 1}}, {"a": [3]}) == {"a": [3], "b": {"c": 1}}
    assert deep_merge({"a": [1, 2], "b": {"c": 1}}, {"a": [], "b": {}}, empty_replaces=True) == {"a": [], "b": {}}
    assert deep_merge({"b": {"c": 1}}, {"b": {}}) == {"b": {"c": 1}}  # defaults <- model <- variant


def test_the_resolved_config_has_no_search_no_ensemble_no_model(tmp_path, repo_root):
    off = _overlay(tmp_path, "decoding: {grid: {}}\nensembles: {}\n")
    config = load_config([repo_root / "config.yaml", off])
    assert decoding_settings(config) == [] and grid(config)
    assert [s.kind for s in systems(config)].count("ensemble") == 0
    job = resolve(config, "tiny-llama", "default")
    assert job.train.learning_rate > 0  # the defaults are intact
    baselines = load_config([repo_root / "config.yaml", _overlay(tmp_path, "run: {models: []}\n")])
    assert grid(baselines) == []
    assert {s.kind for s in systems(baselines)} == {"baseline"} and systems(baselines)


def _planned_jobs(repo_root, overlay) -> dict[str, int]:
    """The job counts of a dry run of the default target with the overlay (Snakemake's "Job stats" table)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1", "results/summary.csv"]
        + ["--configfile", str(overlay)],
        cwd=repo_root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (proc.stdout + proc.stderr).split("Job stats:", 1)[1].split("Reasons:", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def test_a_dry_run_plans_no_search_and_no_model_jobs(tmp_path, repo_root):
    """Two dry runs (about 10 s each): the search and the ensembles off, then the models off."""
    off = _planned_jobs(repo_root, _overlay(tmp_path, "decoding: {grid: {}}\nensembles: {}\n"))
    assert off["train"] == 2 and off["predict"] and not {"decode", "select_decoding", "mbr"} & set(off)
    baselines = _planned_jobs(repo_root, _overlay(tmp_path, "run: {models: []}\n"))
    assert not {"train", "predict", "build_base", "format_prompts", "decode", "mbr"} & set(baselines)
    assert baselines["baseline"] and baselines["evaluate"] and baselines["summary"] == 1
