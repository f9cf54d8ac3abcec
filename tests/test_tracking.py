"""Experiment tracking of training (kdsum.training.tracking, train.report_to): a resumed run re-logs its restored history at
the optimizer steps, DVCLive leaves the repository alone (no dvc.yaml, no `dvc init`), tensorboard and offline wandb
write into the run's tracking folder (skipped unless the [tracking] extra is installed), unknown or missing trackers
are refused in one line. DVCLive in a real training run (the default tracker): tests/test_training.py."""

from __future__ import annotations

import csv
import importlib.util
import subprocess

import pytest
from test_training import _spec, env  # noqa: F401  (the session fixture: tiny bases, prompts)

from kdsum.io import read_json
from kdsum.training.tracking import TrackingError, check_tracker, tracking_callbacks
from kdsum.training.trainer import train

SHORT = dict(max_steps=4, logging_steps=1)


def _tsv(path):
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _train(env, tmp_path, report_to, model="tiny-bart"):  # noqa: F811
    spec = _spec(env, model, report_to=report_to, **SHORT)
    prompts = env["prompts"]["seq2seq" if model == "tiny-bart" else "causal"]
    out = tmp_path / "results" / "train" / model / "default"
    metrics = train(spec, str(env["bases"][model]), prompts, out, tmp_path / "results" / "ckpt", progress=False)
    return out, metrics


def test_a_resumed_run_relogs_the_restored_history_and_dvc_is_left_alone(tmp_path, monkeypatch):
    """The Trainer restores state.log_history after on_train_begin; the first on_log after a resume sees the
    restored rows and the new one, and logs each at its own optimizer step. In a git repository without DVC,
    dvclive.Live on its own would `dvc init` it (and write ./dvc.yaml, ./dvclive): nothing of that here."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "results" / "ckpt"
    (callback,) = tracking_callbacks("dvclive", ckpt)
    args = TrainingArguments(output_dir=str(ckpt), report_to="none", use_cpu=True)
    state, control = TrainerState(global_step=6), TrainerControl()
    state.log_history = [{"loss": 3.0 - s / 10, "step": s, "epoch": s / 10} for s in (2, 4, 6)]  # from a checkpoint
    callback.on_train_begin(args, state, control)
    state.log_history.append({"loss": 2.0, "step": 8})
    callback.on_log(args, state, control, logs=state.log_history[-1])
    state.log_history.append({"loss": 1.5, "step": 10})
    callback.on_log(args, state, control, logs=state.log_history[-1])
    state.log_history.append({"train_loss": 2.4, "train_runtime": 1.0, "step": 10})  # the Trainer's last row
    callback.on_log(args, state, control, logs=state.log_history[-1])
    callback.on_train_end(args, state, control)

    live = ckpt / "tracking" / "dvclive"
    curve = _tsv(live / "plots" / "metrics" / "loss.tsv")
    assert [(int(r["step"]), float(r["loss"])) for r in curve] == [(2, 2.8), (4, 2.6), (6, 2.4), (8, 2.0), (10, 1.5)]
    assert read_json(live / "metrics.json") == {
        "loss": 1.5,
        "epoch": 0.6,
        "train": {"loss": 2.4, "runtime": 1.0},  # DVCLive's names for the Trainer's train_loss, train_runtime
        "step": 10,
    }
    made = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if ".git" not in p.parts)
    assert not [p for p in made if not p.startswith("results")], made  # no .dvc/, dvc.yaml, dvclive/
    assert not list(tmp_path.rglob("dvc.yaml"))


def _extra(package):  # a mark, not importorskip: a skipped test must not build the `env` fixture first
    return pytest.mark.skipif(importlib.util.find_spec(package) is None, reason=f"{package}: no [tracking] extra")


@_extra("tensorboard")
def test_tensorboard_writes_events_into_the_tracking_folder(env, tmp_path, monkeypatch):  # noqa: F811
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    out, metrics = _train(env, tmp_path, "tensorboard")
    events = EventAccumulator(str(out / "tracking" / "tensorboard"))
    events.Reload()
    loss = events.Scalars("train/loss")  # the integration's name for the Trainer's `loss`
    assert [e.step for e in loss] == [1, 2, 3, 4] and loss[-1].value == pytest.approx(metrics["final_loss"])
    assert not (tmp_path / "results" / "ckpt").exists()


@_extra("wandb")
def test_wandb_runs_offline_into_the_tracking_folder(env, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    for var in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_SILENT", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    out, _ = _train(env, tmp_path, "wandb")
    runs = list((out / "tracking" / "wandb").glob("wandb/offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), runs
    assert not (tmp_path / "wandb").exists()


def test_an_unknown_or_missing_tracker_is_refused_in_one_line(monkeypatch):
    with pytest.raises(TrackingError, match=r"train.report_to: 'mlflow' is not one of dvclive"):
        check_tracker("mlflow")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(TrackingError, match=r"needs the `wandb` package: pip install") as err:
        check_tracker("wandb")
    assert "\n" not in str(err.value)
    check_tracker("none")
