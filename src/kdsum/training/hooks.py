"""What the training stage adds to the Trainers by overriding their internals (transformers 5.23, TRL 1.16).

* :class:`GradNormTracker` (a ``TrainerCallback`` with exportable state, saved into each checkpoint): the largest
  pre-clip gradient norm over every optimizer step, and how many were not finite.
* :class:`DivergenceGuard`: a diverged run is an error, not a result. The Trainer's logging filter replaces a NaN
  loss by the mean of the finite ones, so a run whose weights became NaN would otherwise log a falling loss, exit 0
  and write an adapter of NaN. The guard stops the job (:class:`DivergenceError`, one line: the step, the last
  finite loss, the likely cause) at the first optimizer step whose loss or pre-clip gradient norm is not finite,
  before that step updates the weights, and before a checkpoint whose trainable weights are not finite is saved:
  the last good checkpoint stays, and no model is written.
* :class:`TrackingMixin` on ``SFTTrainer`` / ``Seq2SeqTrainer``: ``training_step`` sums the step's micro-batch
  losses; ``_get_grad_norm`` runs at every optimizer step with the pre-clip norm that ``_clip_grad_norm`` returned
  (the same on every DDP rank), feeds the tracker and the guard; ``_save_checkpoint`` lets the guard check the
  weights first; ``_track_num_input_tokens`` counts non-padding inputs, to which the seq2seq decoder's target
  tokens are added (so tokens/s covers both sides).

The Trainer classes are made on first use (:func:`sft_trainer_cls`, :func:`seq2seq_trainer_cls`), so a seq2seq job
does not import TRL.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from kdsum.io import faults_as_errors, read_json
from kdsum.models.finite import non_finite_tensors
from kdsum.training.checkpoints import last_complete_checkpoint
from kdsum.training.data import TrainingError


class GradNormTracker(TrainerCallback, ExportableState):
    """Largest pre-clip gradient norm over every optimizer step (saved into each checkpoint's trainer state)."""

    def __init__(self, max_grad_norm: float | None = None, steps: int = 0, nonfinite: int = 0):
        self.max_grad_norm = max_grad_norm
        self.steps = steps
        self.nonfinite = nonfinite

    def update(self, grad_norm) -> None:
        value = float(grad_norm.item() if hasattr(grad_norm, "item") else grad_norm)
        self.steps += 1
        if not math.isfinite(value):
            self.nonfinite += 1
        elif self.max_grad_norm is None or value > self.max_grad_norm:
            self.max_grad_norm = value

    def state(self) -> dict:
        attributes = {"max_grad_norm": self.max_grad_norm, "steps": self.steps, "nonfinite": self.nonfinite}
        return {"args": {}, "attributes": attributes}

    def restore(self, checkpoint: str) -> None:
        state = read_json(Path(checkpoint) / "trainer_state.json")
        saved = (state.get("stateful_callbacks") or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[-1] if saved else None
        if saved:
            attrs = saved.get("attributes", {})
            self.max_grad_norm = attrs.get("max_grad_norm")
            self.steps = attrs.get("steps", 0)
            self.nonfinite = attrs.get("nonfinite", 0)
        else:  # checkpoint from elsewhere: the logged norms are the best we have
            norms = [r["grad_norm"] for r in state.get("log_history", []) if "grad_norm" in r]
            self.max_grad_norm = max(norms) if norms else None


class DivergenceError(TrainingError):
    """Training diverged (a loss, gradient norm or weight not finite): the job stops, no model is written."""


def _value(x) -> float:
    return float(x.item() if hasattr(x, "item") else x)


class DivergenceGuard:
    """Stops training at the first non-finite loss, gradient norm or checkpoint weight (see the module docstring)."""

    def __init__(self) -> None:
        self.last_finite: tuple[int, float] | None = None  # (step, loss) of the last finite optimizer step

    def check_step(self, args, step: int, loss, grad_norm) -> None:
        loss = _value(loss) if loss is not None else 0.0
        norm = _value(grad_norm) if grad_norm is not None else 0.0
        if math.isfinite(loss) and math.isfinite(norm):
            self.last_finite = (step, loss)
            return
        shown = f"loss {loss:.4g}" + (f", gradient norm {norm:.4g}" if grad_norm is not None else "")
        raise DivergenceError(self.message(args, step, shown))

    def check_weights(self, args, step: int, model) -> None:
        bad, checked = non_finite_tensors(model, trainable_only=True)
        if bad:
            shown = f"{len(bad)} of {checked} trainable weight tensors hold NaN or infinity (first: {bad[0]})"
            raise DivergenceError(self.message(args, step, shown))

    def message(self, args, step: int, shown: str) -> str:
        last = "no finite step in this run"
        if self.last_finite:
            last = f"last finite loss {self.last_finite[1]:.4g} at step {self.last_finite[0]}"
        cause = f"likely cause: train.learning_rate {args.learning_rate:g} is too high"
        if args.bf16:  # the pipeline's one reduced precision (train.bf16)
            cause += ", or bf16 overflowed (try train.bf16: false)"
        kept = last_complete_checkpoint(args.output_dir)
        kept = f"the last good checkpoint is kept ({kept})" if kept else "no checkpoint was saved before it"
        return f"training diverged at step {step}: {shown} ({last}); {cause}; {kept}; no model written"


class TrackingMixin:
    """Hooks into the Trainer: see the module docstring."""

    kdsum_grad_tracker: GradNormTracker | None = None
    kdsum_guard: DivergenceGuard | None = None
    kdsum_step_loss = None  # the current optimizer step's loss: its micro-batches' (already scaled) losses summed
    kdsum_count_targets = False

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.kdsum_step_loss = loss if self.kdsum_step_loss is None else self.kdsum_step_loss + loss
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.kdsum_grad_tracker is not None and grad_norm is not None:
            self.kdsum_grad_tracker.update(grad_norm)
        loss, self.kdsum_step_loss = self.kdsum_step_loss, None
        if self.kdsum_guard is not None:  # before the optimizer step: the weights are still those of the last step
            self.kdsum_guard.check_step(self.args, self.state.global_step + 1, loss, grad_norm)
        return grad_norm

    def _save_checkpoint(self, model, trial):
        if self.kdsum_guard is not None:
            self.kdsum_guard.check_weights(self.args, self.state.global_step, model)
        with faults_as_errors(self.args.output_dir):  # a full disk: one line, the checkpoints before it kept
            super()._save_checkpoint(model, trial)

    def _track_num_input_tokens(self, inputs):
        super()._track_num_input_tokens(inputs)
        if self.kdsum_count_targets and self.args.include_num_input_tokens_seen != "no" and "labels" in inputs:
            targets = (inputs["labels"] != -100).sum()
            self.state.num_input_tokens_seen += int(self.accelerator.gather(targets.reshape(1)).sum().item())


@functools.cache
def sft_trainer_cls():
    from trl import SFTTrainer

    class KdsumSFTTrainer(TrackingMixin, SFTTrainer):
        pass

    return KdsumSFTTrainer


@functools.cache
def seq2seq_trainer_cls():
    from transformers import Seq2SeqTrainer

    class KdsumSeq2SeqTrainer(TrackingMixin, Seq2SeqTrainer):
        kdsum_count_targets = True

    return KdsumSeq2SeqTrainer
