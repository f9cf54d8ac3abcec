"""The whole default pipeline, as a user runs it: `snakemake --cores 1 results/summary.csv` in a fresh copy.

Checks every promised output, that fine-tuned rows beat the zero-shot rows, that the submission matches the
competition format, and that a second run has nothing to do.
"""

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import copy_built

pytestmark = pytest.mark.slow


def test_every_output_is_there(default_pipeline):
    work = default_pipeline
    for rel in [
        "results/data/stats.json",
        "results/prompts/seq2seq/special_tokens.json",
        "results/prompts/chat-plain/train.jsonl",
        "results/base/tiny-llama/config.json",
        "results/train/tiny-llama/default/model/adapter_config.json",
        "results/train/tiny-bart/default/model/config.json",
        "results/train/tiny-llama/default/train_metrics.json",
        "results/train/tiny-llama/default/train_summary.json",
        "results/train/tiny-bart/default/tracking/dvclive/metrics.json",
        "results/train/tiny-bart/default/log_history.csv",
        "results/predictions/tiny-llama/default/dev.csv",
        "results/predictions/tiny-llama/zeroshot/dev.csv",
        "results/predictions/baseline/lead/dev.csv",
        "results/predictions/ensemble/mbr/dev.csv",
        "results/scores/ensemble/mbr/dev_items.csv",
        "results/predictions/tiny-bart/default/submission.csv",
        "results/scores/tiny-bart/default/dev.json",
        "results/scores/tiny-bart/default/dev_metrics.json",
        "results/scores/tiny-bart/default/dev_items.csv",
        "results/summary.csv",
        "results/summary.md",
        "results/submission.csv",
        "results/submission.json",
        "results/plots/scores.png",
        "results/plots/loss.png",
        # selection on the dev tuning rows (kdsum.selection.tuning, kdsum.selection.select)
        "results/train/tiny-bart/default/candidates/index.json",
        "results/selection/tiny-bart/default/checkpoint.json",
        "results/selection/tiny-llama/default/checkpoint.json",
        "results/selection/tiny-llama/default/checkpoints.csv",
        "results/selection/tiny-llama/default/checkpoints.png",
        "results/selection/tiny-bart/default/decoding/sample/score.json",
        "results/selection/tiny-bart/default/decoding.json",
        "results/selection/tiny-bart/default/decoding.md",
        "results/selection/tiny-bart/default/decoding.png",
        "results/scores/tiny-bart/default/dev-report.json",
    ]:
        assert (work / rel).exists(), rel
    # a log per rule run
    assert len(list((work / "results/logs").rglob("*.log"))) >= 20


def test_summary_has_every_system_and_fine_tuning_helps(default_pipeline):
    work = default_pipeline
    df = pd.read_csv(work / "results/summary.csv")
    assert set(df["system"]) == {
        "tiny-bart/default",
        "tiny-llama/default",
        "tiny-bart/zeroshot",
        "tiny-llama/zeroshot",
        "baseline/lead",
        "baseline/longest",
        "ensemble/mbr",
    }
    for col in [
        "rouge1",
        "rouge2",
        "rougeL",
        "final",
        "final_lo",
        "final_hi",
        "rouge_sum",
        "rouge_sum_lo",
        "rouge_sum_hi",
        "mean_chars",
        "foreign_script_share",
        "total_params",
        "trainable_params",
        "train_time_s",
        "tokens_per_s",
        "peak_memory_gb",
        "kind",
        "method",
        "vs_best",
        "diff_vs_best",
        "diff_vs_best_lo",
        "diff_vs_best_hi",
        "p_not_better",
    ]:
        assert col in df, col
    s = df.set_index("system")
    assert (s["rouge_sum"] > 0).all(), "a Korean ROUGE of 0 means the tokenizer dropped Hangul"
    # the leaderboard's scale: the mean of the three F1 (x100), the first score column
    assert list(df.columns).index("final") < list(df.columns).index("rouge1")
    assert ((s["final"] - (s["rouge1"] + s["rouge2"] + s["rougeL"]) / 3).abs() < 1e-9).all()
    for model in ("tiny-bart", "tiny-llama"):
        assert s.loc[f"{model}/default", "rouge_sum"] > s.loc[f"{model}/zeroshot", "rouge_sum"], model
    llama = s.loc["tiny-llama/default"]
    assert llama["trainable_params"] < llama["total_params"]  # LoRA: only adapters train
    assert s.loc["tiny-bart/default", "trainable_params"] == s.loc["tiny-bart/default", "total_params"]
    # every system against the best single system; the MBR row chose each summary from its members'
    best = s[s["kind"] != "ensemble"]["final"].idxmax()
    assert (s["vs_best"] == best).all() and s.loc[best, "diff_vs_best"] == 0
    assert "Paired bootstrap against the best single system" in (work / "results/summary.md").read_text()
    mbr = pd.read_csv(work / "results/predictions/ensemble/mbr/dev.csv")
    assert set(mbr["system"]) <= {"tiny-bart/default", "tiny-llama/default", "baseline/lead"}


def test_submission_matches_competition_format(default_pipeline, shared_data):
    work = default_pipeline
    sub = pd.read_csv(work / "results/predictions/tiny-llama/default/submission.csv", index_col=0)
    sample = pd.read_csv(shared_data / "ko/sample_submission.csv", index_col=0)
    assert list(sub.columns) == list(sample.columns) == ["fname", "summary"]
    test = [json.loads(x)["fname"] for x in (work / "results/data/test.jsonl").read_text().splitlines()]
    assert list(sub["fname"]) == test and list(sub.index) == list(range(len(test)))


def test_second_run_has_nothing_to_do(default_pipeline):
    work = default_pipeline
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "results/summary.csv"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_lint_is_clean(repo_root):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0 and "good condition" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_html_report_has_summary_plots_and_rule_graph(default_pipeline, tmp_path):
    work = copy_built(default_pipeline, tmp_path / "kdsum")  # it builds more outputs: a private copy
    # the examples page is in `all`, not in the summary's DAG: build it, then the report
    page = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "results/report/examples.html"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert page.returncode == 0, page.stderr[-3000:]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--report", "results/report.html"], cwd=work, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (work / "results/report.html").read_text(encoding="utf-8")
    for needle in ("summary.csv", "scores.png", "loss.png", "rulegraph", "format_prompts", "examples.html"):
        assert needle in html, needle


def test_a_config_override_reruns_exactly_that_models_jobs(default_pipeline, tmp_path):
    """`snakemake --config models__tiny-llama__train__learning_rate=...` after a complete run plans that model's
    training and what depends on its model, and nothing of the other model or the zero-shot rows."""
    work = copy_built(default_pipeline, tmp_path / "kdsum")  # a changed config may rewrite specs: a copy
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "results/summary.csv",
            "--config",
            "models__tiny-llama__train__learning_rate=0.05",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    stats = text.split("Job stats:")[1].split("total")[0]
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", stats, re.M))
    # its training (its spec file changed); its checkpoint and decoding selection; the MBR ensemble it is a
    # member of (dev and test) and that ensemble's dev score
    assert planned == {
        "train": "1",
        "select_checkpoint": "1",
        "decode": "2",
        "evaluate_decoding": "2",
        "select_decoding": "1",
        "predict": "2",
        "mbr": "2",
        "evaluate": "2",
        "evaluate_report": "1",
        "submission": "1",
        "best_submission": "1",
        "summary": "1",
    }, text[-3000:]
    outputs = " ".join(re.findall(r"^\s+output: (.*)$", text, re.M))
    assert "tiny-llama/default" in outputs and "tiny-bart" not in outputs and "zeroshot" not in outputs


def test_selection_reports_the_chosen_settings_on_report_rows(default_pipeline):
    """Checkpoints and decoding chosen on the dev tuning rows; the summary's final_report is the chosen
    setting's score on the other rows, never the tuning ones."""
    work = default_pipeline
    df = pd.read_csv(work / "results/summary.csv").set_index("system")
    for system in ("tiny-bart/default", "tiny-llama/default"):
        choice = json.loads((work / f"results/selection/{system}/decoding.json").read_text())
        grid = pd.read_csv(work / f"results/selection/{system}/decoding.csv")
        assert grid.loc[grid["chosen"], "setting"].tolist() == [choice["setting"]] == [df.loc[system, "decoding"]]
        assert grid["final"].max() == grid.loc[grid["chosen"], "final"].iloc[0]
        report = json.loads((work / f"results/scores/{system}/dev-report.json").read_text())
        tuning = json.loads((work / f"results/selection/{system}/decoding/{choice['setting']}/score.json").read_text())
        assert report["part"] == "report" and tuning["part"] == "tuning"
        assert report["n"] + tuning["n"] == df.loc[system, "n"]
        assert abs(df.loc[system, "final_report"] - report["rouge_sum"] / 3) < 1e-9
        checkpoints = pd.read_csv(work / f"results/selection/{system}/checkpoints.csv")
        assert len(checkpoints) >= 2 and checkpoints["chosen"].sum() == 1
        # the choice names the chosen candidate where training wrote it (no copy)
        chosen = json.loads((work / f"results/selection/{system}/checkpoint.json").read_text())
        assert chosen["step"] == checkpoints.loc[checkpoints["chosen"], "step"].iloc[0]
        final = chosen["step"] == checkpoints["step"].max()
        assert chosen["path"] == f"results/train/{system}/" + (
            "model" if final else f"candidates/step-{chosen['step']}"
        )


def test_adding_a_decoding_setting_plans_only_it(default_pipeline, tmp_path):
    """One more setting: its spec and decode job per system, then the selection and what follows it; no other
    setting's decode job, no training."""
    work = copy_built(default_pipeline, tmp_path / "kdsum")  # a changed config may rewrite specs: a copy
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "results/summary.csv"]
        + ["--config", "decoding__grid__beam2={num_beams: 2}"],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    planned = dict(re.findall(r"^(\w+)\s+(\d+)$", text.split("Job stats:")[1].split("total")[0], re.M))
    assert planned["decode"] == "2" and "train" not in planned and "select_checkpoint" not in planned, text[-3000:]
    outputs = " ".join(re.findall(r"^\s+output: (.*)$", text, re.M))
    assert "decoding/beam2/" in outputs and "decoding/greedy/" not in outputs and "decoding/sample/" not in outputs
