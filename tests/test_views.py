"""The views of a run, offline: `dvc plots show` with the vendored page (.dvc/config `plots.html_template`) renders
in a headless browser with no network, its loss curve holds exactly the logged points, and `snakemake --report`
follows the run's config (examples page left out when not built; another config refused in one line)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import copy_built

from kdsum.training.report import write_log_history

ROOT = Path(__file__).resolve().parents[1]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SYSTEMS = ("tiny-bart/default", "tiny-llama/default")


def _history(n: int) -> list[dict]:
    """A Trainer's log history: one row per logged step, then its closing row (mean train_loss, runtime)."""
    rows = [
        {"loss": 3.0 - 0.5 * i, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": i / n, "step": i} for i in (1, 2, 3)
    ]
    return [*rows, {"train_runtime": 1.2, "train_loss": 2.25, "epoch": 1.0, "step": n}]


def test_the_log_history_holds_the_logged_losses_only(tmp_path):
    write_log_history(tmp_path / "log_history.csv", _history(3))
    lines = (tmp_path / "log_history.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split(",")[:3] == ["step", "epoch", "loss"]
    assert [tuple(ln.split(",")[:3:2]) for ln in lines[1:]] == [("1", "2.5"), ("2", "2.0"), ("3", "1.5")]


def _plots_repo(work: Path) -> Path:
    """A DVC repository with the project's plot declarations, .dvc/config and vendored page, and their data files."""
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=work, check=True)
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")
    shutil.copytree(ROOT / "vendor", work / "vendor")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    (work / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}), encoding="utf-8")
    for system in SYSTEMS:
        (work / "results/train" / system).mkdir(parents=True)
        write_log_history(work / "results/train" / system / "log_history.csv", _history(3))
    (work / "results/summary.csv").write_text("system,final\ntiny-bart/default,20.5\nbaseline/lead,12.2\n")
    return work


def _dvc(work: Path, *args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=work, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_the_loss_plot_has_no_point_that_was_not_logged(tmp_path):
    """`dvc plots show --json` (about 5 s): the loss chart's data are the logged steps, no closing row."""
    work = _plots_repo(tmp_path / "repo")
    content = json.loads(_dvc(work, "plots", "show", "--json"))["data"]["training_loss"][0]["content"]
    points = sorted((r["filename"], r["step"], r["loss"]) for r in content["data"]["values"])
    logged = [("1", "2.5"), ("2", "2.0"), ("3", "1.5")]
    assert points == [(f"{s}/log_history.csv", *p) for s in SYSTEMS for p in logged]


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no headless browser (Debian: apt-get install chromium)")
def test_dvc_plots_render_offline_in_a_headless_browser(tmp_path):
    """`dvc plots show` and headless Chromium (about 10 s): both charts drawn, with no network."""
    work = _plots_repo(tmp_path / "repo")
    _dvc(work, "plots", "show", "-o", "plots")
    page = (work / "plots" / "index.html").read_text(encoding="utf-8")
    assert "<script src=" not in page and page.count("vegaEmbed(") == 2  # every script inline
    dom = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000", "--dump-dom"]
        + [(work / "plots" / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count('<canvas width="') == 2 and dom.count('class="marks"') == 2, dom[-2000:]


# --------------------------------------------------------------------------------------------- snakemake --report
def _report(work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--report", "results/report.html", *args]
    return subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_report_follows_the_run(default_pipeline, tmp_path):
    """After `snakemake results/summary.csv` (no examples page): the report is made without the page, naming its
    command; with another config it is refused in one line, naming the options."""
    work = copy_built(default_pipeline, tmp_path / "kdsum")
    proc = _report(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "left out of the report: snakemake --cores 1 results/report/examples.html" in proc.stderr
    html = (work / "results/report.html").read_text(encoding="utf-8")
    assert "summary.csv" in html and "loss.png" in html and "examples.html" not in html
    overlay = tmp_path / "one.yaml"
    overlay.write_text("run: {models: [tiny-llama]}\n", encoding="utf-8")
    other = _report(work, "--configfile", str(overlay))
    assert other.returncode != 0
    assert "results/ holds a run of other settings than config.yaml + " in other.stderr
    assert "spec file(s) differ" in other.stderr and "--configfile" in other.stderr


# --------------------------------------------------------------------------------------------- kdsum exp-table
SCORE = """import json, os, yaml
c = yaml.safe_load(open("config.yaml"))
for system, model in (("tiny-llama/default", "tiny-llama"), ("tiny-bart/default", "tiny-bart"), ("baseline/lead", None)):
    os.makedirs(f"results/scores/{system}", exist_ok=True)
    lr = c["models"][model]["train"]["learning_rate"] if model else 0.0
    json.dump({"final": 10 + 1000 * lr, "rouge1": 1.0}, open(f"results/scores/{system}/dev_metrics.json", "w"))
"""
CONFIG = (
    "models:\n  tiny-llama: {train: {learning_rate: 0.002, seed: 1}}\n  tiny-bart: {train: {learning_rate: 0.001}}\n"
)


def test_exp_table_of_a_saved_dvc_exp_show():
    """`dvc exp show --json` of a repository with two experiments (tests/fixtures/dvc_exp_show.json, made by DVC 3.67
    as the live test below makes it): the changed params and finals, in 120 columns and in 60."""
    from kdsum.reporting.experiments import exp_table, short_names

    shown = json.loads((ROOT / "tests/fixtures/dvc_exp_show.json").read_text(encoding="utf-8"))
    lines = exp_table(shown).splitlines()
    assert lines[0].split() == [
        "experiment", "tiny-bart.train.learning_rate", "tiny-llama.train.learning_rate", "tiny-bart/default",
        "tiny-llama/default",
    ]  # fmt: skip
    assert lines[2].split() == ["master", "0.001", "0.002", "11.00", "12.00"]
    assert len(lines) == 6 and max(map(len, lines)) <= 120  # workspace, master, two experiments, the note
    narrow = exp_table(shown, width=60).splitlines()
    assert max(map(len, narrow[:-1])) <= 60 and "3 more column(s) past 60" in narrow[-1]
    assert "baseline/lead" in exp_table(shown, all_systems=True)  # its final never changed
    assert short_names(["a.train.lr", "b.train.lr", "a.seed"]) == ["a.train.lr", "b.train.lr", "seed"]


@pytest.mark.slow
def test_exp_table_of_live_experiments(tmp_path):
    """A DVC repository whose stage writes the pipeline's metric files from config.yaml params; two `dvc exp run -S`
    (about 30 s): `kdsum exp-table` shows each experiment's changed param beside the finals DVC recorded."""
    work = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=work, check=True)
    (work / "config.yaml").write_text(CONFIG, encoding="utf-8")
    (work / "score.py").write_text(SCORE, encoding="utf-8")
    metrics = [
        {f"results/scores/{s}/dev_metrics.json": {"cache": False}} for s in ("tiny-llama/default", "baseline/lead")
    ]
    stage = {
        "cmd": "python3 score.py",
        "deps": ["score.py"],
        "params": [{"config.yaml": ["models"]}],
        "metrics": metrics,
    }
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score": stage}}), encoding="utf-8")
    _dvc(work, "repro", "-q")
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], cwd=work, check=True)
    for lr in ("0.005", "0.0005"):
        _dvc(work, "exp", "run", "-q", "-S", f"config.yaml:models.tiny-llama.train.learning_rate={lr}")
    out = subprocess.run([sys.executable, "-m", "kdsum", "exp-table"], cwd=work, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["experiment", "learning_rate", "tiny-llama/default"]
    rows = {tuple(ln.split()[-2:]) for ln in lines[1:-1]}
    assert {("0.002", "12.00"), ("0.005", "15.00"), ("0.0005", "10.50")} <= rows and max(map(len, lines)) <= 120
