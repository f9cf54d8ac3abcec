"""The whole Snakemake pipeline with CPU-sized replicas of two real chat models (the real Llama-3 and Qwen3
tokenizers and chat templates; rule replica), LoRA, on the sample data: a summary row for each, and nothing the
template makes (think blocks, headers, end-of-turn tokens) in any summary or submission."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import copy_repo

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "tests/fixtures/config.replicas.yaml"
STEPS = yaml.safe_load(OVERLAY.read_text(encoding="utf-8"))["models"]["llama3-cpu"]["train"]["max_steps"]
TOKENIZERS = ROOT.parent / "shared" / "tokenizers"
TEMPLATE_TEXT = (
    "<think>",
    "</think>",
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "assistant\n",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TOKENIZERS / "llama3").is_dir() or not (TOKENIZERS / "qwen3").is_dir(),
        reason=f"the real tokenizers are not at {TOKENIZERS} (../shared/tokenizers)",
    ),
]


@pytest.fixture(scope="module")
def replica_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("replicas") / "kdsum"
    copy_repo(work)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "results/summary.csv",
            "--configfile",
            "tests/fixtures/config.replicas.yaml",
            "--config",
            f"replicas__tokenizers={TOKENIZERS}",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "results/logs").rglob("*.log")))
        pytest.fail(f"snakemake failed:\n{proc.stderr[-4000:]}\n{logs[-12000:]}")
    return work


def test_replicas_are_hub_shaped(replica_run):
    for name, vocab, tokenizer in (("llama-3.2-3b-cpu", 128256, "llama3"), ("qwen3-4b-cpu", 151936, "qwen3")):
        d = replica_run / "results/replicas" / name
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
            p.name for p in d.iterdir()
        }
        info = json.loads((d / "replica.json").read_text())
        assert info["vocab_size"] == vocab and info["tokenizer"] == tokenizer and info["size"] == "cpu"
        assert (d / "tokenizer.json").read_bytes() == (TOKENIZERS / tokenizer / "tokenizer.json").read_bytes()


def test_both_replicas_reach_the_summary(replica_run):
    df = pd.read_csv(replica_run / "results/summary.csv")
    assert {"llama3-cpu/default", "qwen3-cpu/default"} <= set(df["system"])
    chosen = json.loads((replica_run / "results/submission.json").read_text())
    degenerate = set(df.loc[df["degenerate"].eq(True), "system"])
    assert chosen["system"] not in degenerate  # a degenerate replica is never the submission
    for system in ("llama3-cpu", "qwen3-cpu"):
        metrics = json.loads((replica_run / f"results/train/{system}/default/train_metrics.json").read_text())
        assert metrics["steps"] == STEPS and metrics["trainable_params"] < metrics["total_params"]


def test_no_template_text_in_any_summary(replica_run):
    for system in ("llama3-cpu", "qwen3-cpu"):
        for name in ("dev.csv", "test.csv", "submission.csv"):
            summaries = pd.read_csv(
                replica_run / f"results/predictions/{system}/default/{name}", keep_default_na=False
            )["summary"]
            leaked = [s for s in summaries if any(t in s for t in TEMPLATE_TEXT)]
            assert not leaked, (system, name, leaked[:3])


def test_replicas_follow_their_tokenizers(replica_run, tmp_path):
    """The real tokenizer is a replica's input: pointing replicas.tokenizers elsewhere plans both replicas again
    (and what reads them); the same setting plans nothing."""

    def plan(tokenizers: Path) -> str:
        cmd = [sys.executable, "-m", "snakemake", "-n", "results/summary.csv", "--configfile", str(OVERLAY)]
        proc = subprocess.run(
            [*cmd, "--config", f"replicas__tokenizers={tokenizers}"], cwd=replica_run, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    assert "Nothing to be done" in plan(TOKENIZERS)
    moved = tmp_path / "tokenizers"
    moved.symlink_to(TOKENIZERS, target_is_directory=True)
    planned = plan(moved)
    for seed in ("llama-3.2-3b-cpu", "qwen3-4b-cpu"):
        assert f"output: results/replicas/{seed}" in planned, planned[-3000:]
