"""Hostile config values reach no shell, under Snakemake or DVC; refusals name the key and reach the console.

The data side (Unicode, encodings, speaker tags, leakage) is in tests/test_data.py, the training side
(truncation, destructive paths, broken checkpoints) in tests/test_training.py; docs/RELIABILITY.md lists them all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_repo

from kdsum.config.files import ConfigError, merged_config
from kdsum.config.resolve import load_config

ROOT = Path(__file__).resolve().parents[1]
EVIL_DIR = "data/we ird $(touch PWNED_DIR); x'q\""
EVIL_SYSTEM = "요약하세요 $(touch PWNED_SYS) '; touch PWNED_QUOTE; ' \"x\" `touch PWNED_TICK`"
ENV = {
    **os.environ,
    "DVC_NO_ANALYTICS": "1",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=1200)


def evil_copy(dst: Path) -> Path:
    """A copy whose data paths and prompt text are full of shell metacharacters, written into config.yaml."""
    work = copy_repo(dst)
    (work / EVIL_DIR).mkdir(parents=True)
    for split in ("train", "dev", "test"):
        shutil.copy2(work / f"data/sample/{split}.csv", work / EVIL_DIR / f"{split} $(touch PWNED_FILE).csv")
    config = merged_config([work / "config.yaml"])
    config["data"] = {s: f"{EVIL_DIR}/{s} $(touch PWNED_FILE).csv" for s in ("train", "dev", "test")}
    config["prompt"]["formats"]["plain"]["system"] = EVIL_SYSTEM
    (work / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return work


def assert_nothing_ran(work: Path) -> None:
    pwned = sorted(p.name for p in work.rglob("PWNED*"))
    assert not pwned, f"a config value reached a shell unquoted: {pwned}"


def assert_prompts_hold_the_literal_text(work: Path) -> None:
    first = (work / "results/prompts/chat-plain/train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    assert EVIL_SYSTEM.replace('"', '\\"') in first


def test_shell_metacharacters_in_config_values_never_run_under_snakemake(tmp_path):
    work = evil_copy(tmp_path / "kdsum")
    proc = run([sys.executable, "-m", "snakemake", "--cores", "1", "results/prompts/chat-plain"], work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert_nothing_ran(work)
    assert_prompts_hold_the_literal_text(work)


def test_shell_metacharacters_in_config_values_never_run_under_dvc(tmp_path):
    work = evil_copy(tmp_path / "kdsum")
    assert run([sys.executable, "-m", "kdsum", "dvc-yaml"], work).returncode == 0
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "evil"]):
        assert run(cmd, work).returncode == 0
    proc = run([sys.executable, "-m", "dvc", "repro", "format_prompts_chat-plain"], work)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert_nothing_ran(work)
    assert_prompts_hold_the_literal_text(work)


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("/etc", "a directory without config.json"),
        ("x$(touch PWNED)", "neither a local model directory nor a hub id"),
        ("./no/such/model", "not a directory"),
    ],
)
def test_a_source_that_is_no_model_is_refused_at_load(source, why):
    with pytest.raises(ConfigError, match=rf"key 'models.kobart-base.source': .*{why}"):
        load_config(ROOT / "config.yaml", {"models": {"kobart-base": {"source": source}}})
    assert not Path("PWNED").exists()


def test_a_missing_raw_file_stops_the_run_naming_its_key(tmp_path):
    """Older results present, data.train pointing nowhere: the run stops, naming the key; nothing reuses old data."""
    work = copy_repo(tmp_path / "kdsum")
    assert run([sys.executable, "-m", "snakemake", "--cores", "1", "results/data/stats.json"], work).returncode == 0
    proc = run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "results/data/stats.json",
            "--config",
            "data__train=data/missing.csv",
        ],
        work,
    )
    assert proc.returncode != 0
    assert "key 'data.train': file not found: data/missing.csv" in proc.stdout + proc.stderr


def test_a_refusal_reaches_the_console_not_only_the_log(tmp_path):
    work = copy_repo(tmp_path / "kdsum")
    (work / "bad.csv").write_text("fname,dialogue\ntrain_1,#Person1#: 안녕하세요\n", encoding="utf-8")
    proc = run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "results/data/stats.json",
            "--config",
            "data__train=bad.csv",
        ],
        work,
    )
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]
    assert lines and "bad.csv" in lines[0] and "summary" in lines[0], proc.stderr[-3000:]
    assert not (work / "results/data/train.jsonl").exists()  # nothing half-written


@pytest.mark.parametrize("stage", ["build-base", "replica"])
def test_an_output_directory_that_is_not_the_pipelines_is_never_replaced(tmp_path, stage):
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "thesis.tex").write_text("years of work", encoding="utf-8")
    spec = tmp_path / "base.json"
    assert (
        run(
            [
                sys.executable,
                "-m",
                "kdsum",
                "spec",
                "base/tiny-bart",
                "--configfile",
                "config.yaml",
                "--out",
                str(spec),
            ],
            ROOT,
        ).returncode
        == 0
    )
    args = {
        "build-base": [
            "--spec",
            str(spec),
            "--train",
            "data/sample/train.csv",
            "--special-tokens",
            "x.json",
            "--out-dir",
            str(decoy),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        "replica": ["qwen3-4b", "--size", "cpu", "--out", str(decoy)],
    }[stage]
    proc = run([sys.executable, "-m", "kdsum", stage, *args], ROOT)
    assert proc.returncode == 2 and "refusing to delete it" in proc.stderr, proc.stderr[-2000:]
    assert (decoy / "thesis.tex").read_text(encoding="utf-8") == "years of work"
