"""Pre-flight check of a training job: refuse, before the model is loaded, a job whose estimated peak GPU memory
(kdsum.gpu.memory.estimate_peak_memory) does not fit the card, naming the settings that would.

:func:`check_fits` compares an estimate with the card's free memory (``torch.cuda.mem_get_info``) and raises
:class:`MemoryPlanError`, naming the job and what to change (:func:`alternatives`), when it cannot fit.
:func:`check_spec_fits` does both for a job (kdsum.config.spec.Job), reading the model's config from its source.
:func:`checkpointing` resolves ``train.gradient_checkpointing: auto`` like :func:`fold_accumulation` resolves
``fold_accumulation: auto``. :func:`plan_generation_load` decides, for a QLoRA prediction, whether a merged 16-bit copy of the model fits the card.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from kdsum.config.spec import Job, per_rank_accumulation
from kdsum.errors import KdsumError
from kdsum.gpu.distributed import world_size
from kdsum.gpu.memory import GIB, ModelDims, estimate_generation_memory, estimate_peak_memory, model_dims

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.05  # check_fits keeps this share of the free memory in reserve
FOLD_MARGIN = 0.15  # the planner's error bound on measured peaks: an optional speed-up keeps that much spare


class MemoryPlanError(KdsumError):
    """A training job whose estimated peak exceeds the GPU's free memory; the message says what to change."""


def _describe(est: dict) -> str:
    i = est["inputs"]
    rows = "packed bins" if i["packing"] else "rows"
    return (
        f"model '{est['model']}' ({i['method']}, micro-batch {i['micro_batch']} {rows} x {i['seq_len']} tokens, "
        f"gradient checkpointing {'on' if i['gradient_checkpointing'] else 'off'}, "
        f"packing {'on' if i['packing'] else 'off'}, LoRA r={i['lora_r']})"
    )


def _re_estimate(est: dict, **changes) -> dict:
    inputs = copy.deepcopy(est["inputs"])
    inputs.update(changes)
    return estimate_peak_memory(ModelDims(**est["dims"]), name=est["model"], **inputs)


def alternatives(est: dict, available_gb: float, margin: float = DEFAULT_MARGIN) -> list[tuple[str, dict]]:
    """Settings that would fit ``available_gb``: (advice, estimate) pairs, the cheapest change first."""
    budget = available_gb * (1 - margin)
    out = []
    i = est["inputs"]
    mb = i["micro_batch"]
    while mb > 1:
        mb //= 2
        e = _re_estimate(est, micro_batch=mb)
        if e["total_gb"] <= budget:
            factor = i["micro_batch"] // mb
            out.append(
                (
                    f"lower train.per_device_train_batch_size to {mb} and multiply gradient_accumulation_steps by "
                    f"{factor} (same effective batch)",
                    e,
                )
            )
            break
    if not i["gradient_checkpointing"]:
        e = _re_estimate(est, gradient_checkpointing=True)
        if e["total_gb"] <= budget:
            out.append(("turn on train.gradient_checkpointing (about a third slower per token)", e))
    if i["method"] == "lora":
        e = _re_estimate(est, method="qlora")
        if e["total_gb"] <= budget:
            out.append(("use method qlora (4-bit base weights)", e))
    if i["seq_len"] > 256:
        e = _re_estimate(est, seq_len=i["seq_len"] // 2)
        if e["total_gb"] <= budget:
            out.append((f"lower train.max_length to {i['seq_len'] // 2} (longer dialogues get truncated)", e))
    return out


def free_gpu_memory_gb(device: int | None = None) -> tuple[float, float, str] | None:
    """(free GiB, total GiB, device name) of the current CUDA device, or None without CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device() if device is None else device
    free, total = torch.cuda.mem_get_info(dev)
    return free / GIB, total / GIB, torch.cuda.get_device_name(dev)


def check_fits(
    estimate: dict, available_gb: float | None = None, margin: float = DEFAULT_MARGIN, device_name: str | None = None
) -> dict:
    """Raise :class:`MemoryPlanError` when ``estimate['total_gb']`` exceeds ``available_gb`` less ``margin``.

    ``available_gb`` defaults to the free memory of the current CUDA device (``torch.cuda.mem_get_info``); without
    CUDA and without ``available_gb`` nothing is checked. Returns ``{"fits", "checked", "available_gb", ...}``.
    """
    if available_gb is None:
        info = free_gpu_memory_gb()
        if info is None:
            return {"fits": None, "checked": False, "reason": "no CUDA device", "estimate_gb": estimate["total_gb"]}
        available_gb, _total, name = info
        device_name = device_name or name
    device_name = device_name or "the GPU"
    budget = available_gb * (1 - margin)
    result = {
        "fits": estimate["total_gb"] <= budget,
        "checked": True,
        "available_gb": round(available_gb, 2),
        "budget_gb": round(budget, 2),
        "estimate_gb": estimate["total_gb"],
        "device": device_name,
    }
    if result["fits"]:
        return result
    parts = ", ".join(f"{k} {v:.1f}" for k, v in estimate["parts"].items())
    advice = alternatives(estimate, available_gb, margin)
    if advice:
        todo = "; or ".join(f"{text} (estimated {e['total_gb']:.1f} GiB)" for text, e in advice)
    else:
        todo = "no single change of batch, checkpointing, method or length fits: use a larger GPU or a smaller model"
    raise MemoryPlanError(
        f"{_describe(estimate)} needs about {estimate['total_gb']:.1f} GiB of GPU memory ({parts}), but "
        f"{device_name} has {available_gb:.1f} GiB free (the planner keeps {margin:.0%} in reserve: "
        f"{budget:.1f} GiB usable). To fit: {todo}. The estimate is kdsum.gpu.memory.estimate_peak_memory "
        f"(within about 15% of measured peaks, docs/BENCHMARKS.md section 3)."
    )


def estimate_for_spec(
    job: Job,
    model_config: Any,
    method: str | None = None,
    attention: str = "sdpa",
    vocab: int | None = None,
    trainable_tokens: int = 0,
    kernels: str = "none",
    micro_batch: int | None = None,
) -> dict:
    """The estimate of a job (kdsum.config.spec.Job) for a causal model trained by the pipeline (TRL SFTTrainer: fused
    LM head; transformers' default SDPA attention unless ``attention='varlen'``), with ``micro_batch`` rows per
    micro-batch (default: the job's ``per_device_train_batch_size``).

    ``vocab``: the tokenizer's length once the data tokens (and a pad token) are added; the model grows to it when
    it exceeds the config's ``vocab_size`` (kdsum.models.data_tokens), so the estimate takes the larger of the two.
    ``trainable_tokens``: the data-token rows trained (kdsum.gpu.memory, lora+optimizer)."""
    t = job.train
    dims = model_dims(model_config, job.model)
    if vocab is not None and vocab > dims.vocab:
        dims = dataclasses.replace(dims, vocab=int(vocab))
    return estimate_peak_memory(
        dims,
        method or job.method,
        micro_batch or t.per_device_train_batch_size,
        t.max_length,
        t.gradient_checkpointing,
        t.packing,
        job.lora.r,
        "bfloat16",
        lora_dropout=job.lora.lora_dropout,
        attention=attention,
        kernels=kernels,
        loss="fused",
        double_quant=job.quantization.bnb_4bit_use_double_quant,
        trainable_tokens=trainable_tokens,
        world_size=world_size(),  # DDP: each rank plans its own card (kdsum.gpu.distributed.setup_rank made it current)
    )


def _read_model_config(source: str) -> tuple[Any, str | None]:
    """(the model's config, None), from a local directory or the HF cache first (the planner makes no network call
    it can avoid), else the hub; (None, why) when it cannot be read (training will report the real problem)."""
    try:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(source, local_files_only=True), None
        except OSError:
            return AutoConfig.from_pretrained(source), None
    except Exception as exc:  # offline hub id, unreadable dir
        log.warning("memory check skipped: cannot read the config of %s (%s)", source, exc)
        return None, f"config unreadable: {exc.__class__.__name__}"


def check_spec_fits(
    job: Job,
    source: str,
    method: str | None = None,
    available_gb: float | None = None,
    attention: str = "sdpa",
    vocab: int | None = None,
    trainable_tokens: int = 0,
    kernels: str = "none",
    margin: float = DEFAULT_MARGIN,
    micro_batch: int | None = None,
) -> dict:
    """Check a causal LoRA/QLoRA job before its model is loaded: read the model's config from ``source`` (a local
    directory or a hub id), estimate, compare with the free GPU memory. Skipped (returns ``checked: False``) without
    CUDA, for seq2seq models, or when the config cannot be read (training then reports the real problem).
    ``attention``: the job's resolved ``train.attention`` (kdsum.gpu.attention); ``eager`` is planned as ``sdpa``
    (the debugging path also keeps the attention probabilities: the plan is low for it). ``vocab``,
    ``trainable_tokens``: :func:`estimate_for_spec` (the training stage passes ``len(tokenizer)`` and the data
    tokens it added); ``micro_batch``: the one the rank trains (:func:`fold_accumulation`), default the job's."""
    method = method or job.method
    if job.family != "causal" or method not in ("lora", "qlora"):
        return {"checked": False, "reason": f"{job.family}/{method}: the planner covers causal LoRA/QLoRA"}
    if available_gb is None and free_gpu_memory_gb() is None:
        return {"checked": False, "reason": "no CUDA device"}
    model_config, unreadable = _read_model_config(source)
    if unreadable:
        return {"checked": False, "reason": unreadable}
    est = estimate_for_spec(
        job,
        model_config,
        method,
        attention="varlen" if attention == "varlen" else "sdpa",
        kernels=kernels,
        vocab=vocab,
        trainable_tokens=trainable_tokens,
        micro_batch=micro_batch,
    )
    result = check_fits(est, available_gb=available_gb, margin=margin)
    result["estimate"] = est
    log.info(
        "memory plan: %s needs ~%.1f GiB, %.1f GiB free",
        job.model,
        est["total_gb"],
        result.get("available_gb", float("nan")),
    )
    return result


def checkpointing(job: Job, source: str, method: str | None = None, **plan: Any) -> bool:
    """Whether the job recomputes activations: ``train.gradient_checkpointing`` as written, or for ``auto`` the
    planner's call: off where :func:`check_spec_fits` plans the job without checkpointing within
    :data:`FOLD_MARGIN` of the card (recomputation costs about a third of a step: the shipped 3B QLoRA recipe runs
    without it on an 80 GB card and keeps it on a 24 GB one); on where that does not fit, or where CUDA is there
    but the planner cannot plan the job (seq2seq, a full fine-tune, an unreadable config); off without CUDA.
    ``plan``: :func:`check_spec_fits`'s keywords (``available_gb`` lets a test decide without a card)."""
    written = job.train.gradient_checkpointing
    if written != "auto":
        return bool(written)
    if plan.get("available_gb") is None and free_gpu_memory_gb() is None:
        return False
    off = with_checkpointing(job, False)
    try:
        result = check_spec_fits(off, source, method, margin=FOLD_MARGIN, **plan)
    except MemoryPlanError:
        log.info("train.gradient_checkpointing: auto -> on (the job would not fit without it)")
        return True
    return not result.get("checked")


def with_checkpointing(job: Job, enabled: bool) -> Job:
    """``job`` with ``train.gradient_checkpointing`` set to ``enabled``."""
    return dataclasses.replace(job, train=dataclasses.replace(job.train, gradient_checkpointing=bool(enabled)))


@dataclass(frozen=True)
class RankBatch:
    """What one rank trains per optimizer step: ``accumulation`` micro-batches of ``micro_batch`` rows (packed bins)."""

    micro_batch: int
    accumulation: int
    folded: bool = False


def written_batch(job: Job) -> RankBatch:
    """The job's batch as written, on this rank: the one-GPU accumulation divided by the world size (DDP keeps the
    global batch of one GPU, kdsum.config.spec.per_rank_accumulation)."""
    t = job.train
    return RankBatch(t.per_device_train_batch_size, per_rank_accumulation(t.gradient_accumulation_steps, world_size()))


def fold_accumulation(job: Job, source: str, method: str | None = None, **plan: Any) -> RankBatch:
    """This rank's batch: its accumulated micro-batches trained as one micro-batch (``per_device_train_batch_size``
    times the rank's accumulation steps, one step per rank) when ``train.fold_accumulation`` is ``auto`` and the
    planner says the larger micro-batch fits the card with :data:`FOLD_MARGIN` to spare; else as written
    (:func:`written_batch`).

    Each optimizer step then sees the same rows, and the same loss: transformers / TRL normalise a causal loss by
    the completion tokens of the whole accumulated batch (``num_items_in_batch``), so the gradient is that of the one
    larger batch (``tests/test_training.py::test_folded_accumulation_trains_like_accumulation``). Fewer, larger
    matmuls: 3B LoRA on an H200, 29,585 against 27,809 tokens/s (docs/BENCHMARKS.md section 7). Only where
    :func:`check_spec_fits` plans the job (causal LoRA / QLoRA with CUDA or a given ``available_gb``), so a machine
    makes the same choice every run. ``plan``: :func:`check_spec_fits`'s keywords. The decision only: the training
    stage builds the Trainer's arguments from it (kdsum.training.trainer.trainer_arguments)."""
    written = written_batch(job)
    if job.train.fold_accumulation != "auto" or written.accumulation <= 1:
        return written
    folded = RankBatch(written.micro_batch * written.accumulation, 1, folded=True)
    try:
        result = check_spec_fits(job, source, method, margin=FOLD_MARGIN, micro_batch=folded.micro_batch, **plan)
    except MemoryPlanError:
        return written
    if not result.get("checked"):
        return written
    log.info(
        "train.fold_accumulation: %d micro-batches of %d as one of %d (~%.1f GiB planned)",
        written.accumulation,
        written.micro_batch,
        folded.micro_batch,
        result["estimate_gb"],
    )
    return folded


def plan_generation_load(
    job: Job,
    source: str,
    vocab: int | None = None,
    available_gb: float | None = None,
    model_config: Any = None,
    margin: float = FOLD_MARGIN,
) -> dict:
    """Whether a QLoRA job predicts with its 4-bit base dequantized and the adapter merged into a 16-bit model
    (the fast engine serves it) rather than with the 4-bit base and an unmerged adapter: ``{"merge": bool,
    "reason": str, ...}``. Merged where the planner's estimate (kdsum.gpu.memory.estimate_generation_memory: the
    16-bit weights and the KV cache of one batch of ``generation.batch_size x num_beams`` rows of ``train.max_length``
    tokens) fits the free memory with :data:`FOLD_MARGIN` to spare. ``available_gb`` (default: the card's free
    memory) and ``model_config`` (default: read from ``source``) let a test decide without a GPU."""
    if available_gb is None:
        info = free_gpu_memory_gb()
        if info is None:
            return {"merge": False, "reason": "no CUDA device to plan a 16-bit copy on"}
        available_gb = info[0]
    if model_config is None:
        model_config, unreadable = _read_model_config(source)
        if unreadable:
            return {"merge": False, "reason": f"the model's config cannot be read for the plan ({unreadable})"}
    dims = model_dims(model_config, job.model)
    if vocab is not None and vocab > dims.vocab:
        dims = dataclasses.replace(dims, vocab=int(vocab))
    g = job.generation
    est = estimate_generation_memory(
        dims,
        rows=g.batch_size * g.num_beams,
        tokens=job.train.max_length,
        nf4_source=True,
        double_quant=job.quantization.bnb_4bit_use_double_quant,
    )
    budget = available_gb * (1 - margin)
    need = f"~{est['total_gb']:.1f} GiB planned, {available_gb:.1f} GiB free ({margin:.0%} kept spare)"
    if est["total_gb"] <= budget:
        return {"merge": True, "reason": f"a merged 16-bit copy fits: {need}", "estimate_gb": est["total_gb"]}
    return {
        "merge": False,
        "reason": f"a merged 16-bit copy does not fit: {need}; the 4-bit base with an unmerged adapter instead",
        "estimate_gb": est["total_gb"],
    }
