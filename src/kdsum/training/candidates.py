"""Candidate checkpoints for selection by ROUGE (``train.select_checkpoints``: ``epoch`` or a list of steps).

The Trainer's own ``checkpoint-N`` folders serve resuming and are rotated by ``save_total_limit``, so they cannot
hold the candidates. :class:`CandidateSaver` makes the Trainer save at each candidate step (every epoch's end, or
the listed steps) and, right after that save, writes the model alone (adapter or full weights, and the tokenizer,
as the training output is written) to ``<checkpoint-dir>/candidates/step-N``: inside the fingerprinted checkpoint
directory, so a resumed run keeps the candidates it made and a run with other settings starts without them, and
outside the rotation (it removes only top-level ``checkpoint-*`` folders). The training stage then moves them into
its output ``OUT/candidates`` with an ``index.json``; the final model (``OUT/model``) is always a candidate too.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from kdsum.errors import KdsumError
from kdsum.io import atomic_dir, read_json, write_json
from kdsum.models.finite import check_finite_weights

log = logging.getLogger(__name__)

CANDIDATES = "candidates"
INDEX = "index.json"
PREFIX = "step-"


class CandidateError(KdsumError):
    """A candidates directory that does not match its index."""


def save_model_dir(model, tokenizer, family: str, model_dir: Path) -> None:
    """Model files as the training stage writes its output (kdsum.training.report.save_outputs)."""
    check_finite_weights(model, f"candidate {model_dir}", trainable_only=True)
    if family == "causal":
        # embeddings are never saved whole: new data-token rows travel as trainable-token deltas
        model.save_pretrained(model_dir, save_embedding_layers=False)
    else:
        use_cache = model.config.use_cache
        model.config.use_cache = True  # as generation loads it
        try:
            model.save_pretrained(model_dir)
        finally:
            model.config.use_cache = use_cache
    tokenizer.save_pretrained(model_dir)


class CandidateSaver(TrainerCallback):
    """Save the model at every candidate step (see the module docstring)."""

    def __init__(self, select: str | list[int], family: str, checkpoint_dir: str | Path):
        self.epoch = select == "epoch"
        self.steps = set() if isinstance(select, str) else set(select)
        self.family = family
        self.out = Path(checkpoint_dir) / CANDIDATES
        self._pending: set[int] = set()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_save = True
            self._pending.add(state.global_step)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.epoch:
            control.should_save = True
            self._pending.add(state.global_step)
        return control

    def on_save(self, args, state, control, model=None, processing_class=None, **kwargs):
        step = state.global_step
        if step in self._pending:
            self._pending.discard(step)
            with atomic_dir(self.out / f"{PREFIX}{step}") as tmp:
                save_model_dir(model, processing_class, self.family, tmp)
            log.info("kept candidate checkpoint %s", self.out / f"{PREFIX}{step}")
        return control


def candidate_saver(job, checkpoint_dir: str | Path) -> CandidateSaver | None:
    select = job.train.select_checkpoints
    return None if select == "none" else CandidateSaver(select, job.family, checkpoint_dir)


def collect_candidates(checkpoint_dir: str | Path, out: Path, final_step: int, select: str | list[int]) -> None:
    """Copy the candidates of ``checkpoint_dir`` (earlier than the final step: that one is ``OUT/model``) into
    ``out`` with an index; steps listed beyond the run's end are named in a warning."""
    src = Path(checkpoint_dir) / CANDIDATES
    out.mkdir(parents=True)
    steps = []
    if src.is_dir():
        for path in sorted(src.glob(f"{PREFIX}*"), key=lambda p: int(p.name[len(PREFIX) :])):
            step = int(path.name[len(PREFIX) :])
            if step < final_step:
                shutil.copytree(path, out / path.name)
                steps.append(step)
    if isinstance(select, list) and (late := sorted(s for s in select if s >= final_step)):
        log.warning("train.select_checkpoints: step(s) %s not before the final step %d", late, final_step)
    write_json(out / INDEX, {"select_checkpoints": select, "steps": steps, "final_step": final_step})


def candidate_models(candidates_dir: str | Path, final_model: str | Path) -> list[tuple[int, Path]]:
    """(step, model directory) of every candidate, by step; the final model last."""
    candidates_dir = Path(candidates_dir)
    index = read_json(candidates_dir / INDEX)
    found = []
    for step in index["steps"]:
        path = candidates_dir / f"{PREFIX}{step}"
        if not path.is_dir():
            raise CandidateError(f"{candidates_dir}/{INDEX} lists step {step}, but {path} is missing")
        found.append((int(step), path))
    return [*found, (int(index["final_step"]), Path(final_model))]
