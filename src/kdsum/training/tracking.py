"""Experiment tracking of a training run: ``train.report_to`` = ``dvclive`` (default) | ``tensorboard`` | ``wandb``
(offline) | ``none``.

Each tracker writes into ``<checkpoint dir>/tracking/<tracker>/`` while the Trainer runs (so a killed run keeps it
with its checkpoints), and :func:`copy_tracking` puts that folder into the job's output directory as ``tracking/``
(a declared output of the train rule, so Snakemake and DVC both know it). The trainer itself gets
``report_to="none"``: the callbacks are made here, after the checkpoint directory has been prepared (it may be
wiped), with the directories chosen here, not the integrations' defaults (``./dvclive``, ``output_dir/runs``,
``./wandb``).

* ``dvclive``: transformers' own ``DVCLiveCallback`` around a ``dvclive.Live`` that writes no ``dvc.yaml`` and
  saves no experiment (``dvc exp run`` records the pipeline's experiment; dvc.yaml is generated from the rules).
  Its ``on_log`` is replaced so that the step of each point is the optimizer step, and so that a resumed run
  re-logs the history restored from the checkpoint: the curves come out as those of an uninterrupted run.
* ``tensorboard``: transformers' ``TensorBoardCallback``, events in ``tracking/tensorboard`` (needs
  ``pip install -e ".[tracking]"``). A resumed run adds a second events file.
* ``wandb``: transformers' ``WandbCallback`` with ``WANDB_MODE=offline`` (unless set), ``WANDB_DIR`` the tracking
  folder (needs the ``tracking`` extra); ``wandb sync`` uploads the run later, if wanted.

What ``dvc exp show`` / ``dvc metrics`` read is not these folders but ``train_summary.json``
(kdsum.training.report.summary_metrics), which every run writes whatever its tracker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from kdsum.errors import KdsumError

TRACKERS = ("dvclive", "tensorboard", "wandb", "none")
TRACKING_DIR = "tracking"
_PACKAGE = {"dvclive": "dvclive", "tensorboard": "tensorboard", "wandb": "wandb"}


class TrackingError(KdsumError):
    """A tracker that is unknown or not installed."""


def tracking_dir(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / TRACKING_DIR


def check_tracker(report_to: str) -> None:
    """Before anything is loaded: an unknown tracker, or one whose package is missing, in one line."""
    if report_to not in TRACKERS:
        raise TrackingError(f"train.report_to: {report_to!r} is not one of {', '.join(TRACKERS)}")
    package = _PACKAGE.get(report_to)
    if package and importlib.util.find_spec(package) is None:
        raise TrackingError(
            f"train.report_to: {report_to} needs the `{package}` package: pip install -e '.[tracking]' "
            "(or set train.report_to: none)"
        )


def _dvclive_callback(directory: Path):
    from dvclive import Live
    from dvclive.plots import Metric
    from dvclive.utils import standardize_metric_name
    from transformers.integrations import DVCLiveCallback

    class _Live(Live):
        def _init_dvc(self):
            # Live's DVC hooks find (or `dvc init`!) a repository around the working directory, mark experiments
            # and `git add` untracked files of its folder during `dvc exp run`; the pipeline needs none of it:
            # the folder is a declared stage output, and `dvc exp run` records the experiment.
            self._save_dvc_exp = False

    class _Callback(DVCLiveCallback):
        sent = 0  # rows of state.log_history already logged

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            if not self._initialized:
                self.setup(args, state, model)
            if not state.is_world_process_zero:
                return
            # state.log_history already holds this call's row; after a resume it starts with the restored rows
            for row in state.log_history[self.sent :]:
                self.live.step = int(row.get("step", state.global_step))
                for key, value in row.items():
                    if key != "step" and Metric.could_log(value):
                        self.live.log_metric(standardize_metric_name(key, "dvclive.huggingface"), value)
                self.live.make_summary()
            self.sent = len(state.log_history)

    live = _Live(dir=str(directory), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
    return _Callback(live=live, log_model=False)


def tracking_callbacks(report_to: str, checkpoint_dir: str | os.PathLike) -> list:
    """The tracker's callback for a Trainer whose checkpoints live in ``checkpoint_dir`` (call after the directory
    was prepared: it may have been wiped). ``none``: no callback."""
    check_tracker(report_to)
    if report_to == "none":
        return []
    directory = tracking_dir(checkpoint_dir) / report_to
    directory.mkdir(parents=True, exist_ok=True)  # after a resume, Live (resume=False) clears its old files
    if report_to == "dvclive":
        return [_dvclive_callback(directory)]
    if report_to == "tensorboard":
        from transformers.integrations import TensorBoardCallback

        callback = TensorBoardCallback()
        callback.logging_dir = str(directory)  # read in on_train_begin; the default is output_dir/runs/<date_host>
        return [callback]
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_DIR"] = str(directory)
    os.environ.setdefault("WANDB_PROJECT", "kdsum")
    os.environ.setdefault("WANDB_SILENT", "true")
    from transformers.integrations import WandbCallback

    return [WandbCallback()]


def finish(callbacks: list) -> None:
    """wandb keeps its run open after training (the Trainer does not finish it): finish it, so its files are
    complete before they are copied."""
    if any(type(c).__name__ == "WandbCallback" for c in callbacks):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def copy_tracking(checkpoint_dir: str | os.PathLike, out: Path) -> None:
    """``OUT/tracking``: the tracker's folder, or an empty one (``none``), since the rule declares it."""
    source, target = tracking_dir(checkpoint_dir), out / TRACKING_DIR
    if source.is_dir():
        shutil.copytree(source, target, symlinks=False)
    else:
        target.mkdir(parents=True)
