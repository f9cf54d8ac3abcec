"""Running a built Trainer (resuming where a checkpoint says) and what a training job reports and writes.

Outputs of a job, written through :func:`kdsum.io.atomic_dir` (whole or not at all): ``OUT/model/`` (the adapter and
tokenizer, or the full model and tokenizer), ``OUT/candidates/`` (kdsum.training.candidates), ``OUT/train_metrics.json``
(:func:`training_metrics`), ``OUT/log_history.csv`` (the Trainer's log history), ``OUT/train_summary.json``
(:func:`summary_metrics`: the few numbers DVC shows as metrics) and ``OUT/tracking/`` (the tracker's files,
kdsum.training.tracking).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import resource
import time
from pathlib import Path

import torch

from kdsum.config.spec import Job
from kdsum.gpu import distributed
from kdsum.io import atomic_dir, read_json, write_json
from kdsum.training import tracking
from kdsum.training.candidates import collect_candidates
from kdsum.training.checkpoints import library_versions

log = logging.getLogger(__name__)

_GIB = 2**30


def peak_memory() -> tuple[float, str]:
    """(peak GiB, device): CUDA max allocated on a GPU, peak resident set size of this process on the CPU."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / _GIB, 3), f"cuda:{torch.cuda.get_device_name()}"
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB, 3), "cpu"


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); for a PeftModel, PEFT's count (which unpacks 4-bit weights)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def write_log_history(path: str | os.PathLike, history: list[dict]) -> None:
    """The Trainer's logged steps as CSV (step, epoch, loss, learning_rate, grad_norm first, then the rest): the
    rows that hold a training loss. The closing row (mean ``train_loss``, runtime: train_metrics.json has them) is left
    out, as any row without a loss: a plot of ``loss`` by ``step`` (DVC's) would draw its empty cell as a last point."""
    history = [row for row in history if "loss" in row]
    first = ["step", "epoch", "loss", "learning_rate", "grad_norm", "num_input_tokens_seen"]
    keys = [k for k in first if any(k in row for row in history)]
    keys += sorted({k for row in history for k in row} - set(keys))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in keys})


def run_training(trainer, resume: str | None) -> dict:
    """``trainer.train()``, from ``resume`` (a checkpoint) when given, the grad-norm tracker restored from it.
    Returns the step resumed from, the tokens seen before, and the wall time of this run."""
    resumed_from_step, tokens_before = None, 0
    if resume:
        state = read_json(Path(resume) / "trainer_state.json")
        resumed_from_step = int(state["global_step"])
        tokens_before = int(state.get("num_input_tokens_seen", 0) or 0)
        trainer.kdsum_grad_tracker.restore(resume)
        log.info("resuming from %s (step %d)", resume, resumed_from_step)
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    return {"resumed_from_step": resumed_from_step, "tokens_before": tokens_before, "wall": time.time() - start}


def _loss_summary(log_history: list[dict]) -> dict:
    losses = [r["loss"] for r in log_history if "loss" in r]
    return {
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "best_loss": min(losses) if losses else None,
    }


def training_metrics(
    job: Job, trainer, info: dict, run: dict, base_source: str, warnings: list[str], fingerprint: dict
) -> dict:
    """train_metrics.json: what ran (method, attention, versions), how fast, how much memory, the losses."""
    state, wall = trainer.state, run["wall"]
    trainable, total = count_parameters(trainer.model)
    mem, mem_device = peak_memory()
    mem = distributed.gather_max(mem)  # DDP: the largest rank's peak (the Trainer sums the tokens over ranks)
    session_tokens = int(state.num_input_tokens_seen) - run["tokens_before"]
    tracker = trainer.kdsum_grad_tracker
    return {
        "model": job.model,
        "variant": job.variant,
        "family": job.family,
        "method": job.method,
        "method_effective": info["method_effective"],
        "warnings": list(warnings),
        **info.get("data", {}),  # rows_total, rows_trained, rows_cut, rows_dropped, targets_cut, budgets
        "base_source": str(base_source),
        "wall_time_s": round(wall, 2),
        "train_tokens": int(state.num_input_tokens_seen),
        "train_tokens_this_run": session_tokens,
        "tokens_per_s": round(session_tokens / wall, 2) if wall > 0 else None,
        "steps": int(state.global_step),
        "epochs": round(float(state.epoch or 0.0), 4),
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_gb": mem,
        "world_size": distributed.world_size(),  # DDP ranks (processes) that trained
        "memory_device": mem_device,
        **_loss_summary(state.log_history),
        "max_grad_norm": tracker.max_grad_norm,
        "grad_norm_steps": tracker.steps,
        "nonfinite_grad_norms": tracker.nonfinite,
        "resumed_from_step": run["resumed_from_step"],
        "packing": job.train.packing,
        "attention_effective": info["attention_effective"],
        "kernels_effective": info["kernels_effective"],
        "compiled_layers": info["compiled_layers"],
        "gradient_checkpointing_effective": info["gradient_checkpointing_effective"],
        "accumulation_folded": info["accumulation_folded"],
        "micro_batch_effective": info["micro_batch_effective"],
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "new_data_tokens": len(info["new_token_ids"]),
        "seed": job.train.seed,
        "fingerprint": fingerprint["fingerprint"],
        "train_config": dataclasses.asdict(job.train),
        "lora": dataclasses.asdict(job.lora) if job.family == "causal" else None,
        "versions": library_versions(),
    }


# train_metrics.json's numbers that `dvc exp show` lists per run (the rest of that file describes the run: settings,
# versions, warnings, data counts; a DVC metric of it would add a hundred columns)
SUMMARY_KEYS = (
    "final_loss",
    "best_loss",
    "steps",
    "epochs",
    "train_tokens",
    "tokens_per_s",
    "wall_time_s",
    "peak_memory_gb",
)


def summary_metrics(metrics: dict) -> dict:
    """train_summary.json: the training summary metrics (a subset of train_metrics.json)."""
    return {k: metrics.get(k) for k in SUMMARY_KEYS}


def save_outputs(trainer, job: Job, metrics: dict, out_dir: Path, checkpoint_dir: Path | None = None) -> None:
    """OUT/model, OUT/candidates (kdsum.training.candidates: those kept in ``checkpoint_dir``), OUT/train_metrics.json,
    OUT/train_summary.json, OUT/log_history.csv, OUT/tracking (copied from ``checkpoint_dir``'s tracking folder,
    where the tracker wrote), atomically."""
    with atomic_dir(out_dir) as tmp:
        collect_candidates(
            checkpoint_dir or tmp / "none", tmp / "candidates", metrics["steps"], job.train.select_checkpoints
        )
        model_dir = tmp / "model"
        if job.family == "causal":
            # embeddings are never saved whole: new data-token rows travel as trainable-token deltas, and
            # kdsum.models.loading.load_for_generation grows the base the same way before attaching the adapter
            trainer.model.save_pretrained(model_dir, save_embedding_layers=False)
        else:
            trainer.model.config.use_cache = True
            trainer.save_model(str(model_dir))
        trainer.processing_class.save_pretrained(model_dir)
        write_json(tmp / "train_metrics.json", metrics)
        write_json(tmp / "train_summary.json", summary_metrics(metrics))
        write_log_history(tmp / "log_history.csv", trainer.state.log_history)
        if checkpoint_dir is not None:
            tracking.copy_tracking(checkpoint_dir, tmp)
