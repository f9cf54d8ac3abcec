"""What the training stage adds to the Trainers by overriding their internals (transformers 5.23, TRL 1.16).

* :class:`GradNormTracker` (a ``TrainerCallback`` with exportable state, saved into each checkpoint): the largest
  pre-clip gradient norm over every optimizer step, and how many were not finite.
* :class:`TrackingMixin` on ``SFTTrainer`` / ``Seq2SeqTrainer``: ``_get_grad_norm`` runs at every optimizer step with
  the pre-clip norm that ``_clip_grad_norm`` returned, and feeds the tracker; ``_track_num_input_tokens`` counts
  non-padding inputs, to which the seq2seq decoder's target tokens are added (so tokens/s covers both sides).

The Trainer classes are made on first use (:func:`sft_trainer_cls`, :func:`seq2seq_trainer_cls`), so a seq2seq job
does not import TRL.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from kdsum.io import read_json


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


class TrackingMixin:
    """Hooks into the Trainer: see the module docstring."""

    kdsum_grad_tracker: GradNormTracker | None = None
    kdsum_count_targets = False

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.kdsum_grad_tracker is not None and grad_norm is not None:
            self.kdsum_grad_tracker.update(grad_norm)
        return grad_norm

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
