"""Fused training kernels (``train.kernels``): ``auto`` | ``liger`` | ``none``.

``liger`` applies Liger-Kernel's Triton kernels to the decoder layers (RMSNorm, SwiGLU, RoPE) through
``TrainingArguments.use_liger_kernel``; TRL keeps its own fused LM-head loss. The kernels save memory as well as
time: Liger's RMSNorm keeps its bf16 input instead of an fp32 copy, its SwiGLU keeps gate and up but not the SiLU
output (kdsum.memory plans with ``kernels``). ``auto`` takes Liger on CUDA when it is installed (the ``[gpu]``
extra) and supports the architecture, and nothing otherwise; ``liger`` refuses to run without them, in one line.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from kdsum.errors import KdsumError
from kdsum.spec import Job

CHOICES = ("auto", "liger", "none")


class KernelError(KdsumError):
    """``train.kernels: liger`` where Liger cannot run."""


@functools.cache
def liger_model_types() -> frozenset[str] | None:
    """The model types Liger patches, or None when liger-kernel (or Triton) is not importable."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return frozenset(MODEL_TYPE_TO_APPLY_LIGER_FN)


def model_type(source: str) -> str | None:
    """``model_type`` from a local model directory's config.json (None for a hub id or an unreadable config:
    transformers resolves those when it loads the model)."""
    path = Path(source) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def resolve_kernels(job: Job, source_model_type: str | None, cuda: bool | None = None) -> str:
    """'liger' or 'none' for one training job (see the module docstring)."""
    choice = job.train.kernels
    if choice not in CHOICES:
        raise KernelError(f"model '{job.model}': train.kernels must be one of {CHOICES}, got {choice!r}")
    if choice == "none":
        return "none"
    cuda = torch.cuda.is_available() if cuda is None else cuda
    types = liger_model_types() if cuda else None
    supported = types is not None and (source_model_type is None or source_model_type in types)
    if choice == "auto":
        return "liger" if cuda and job.family == "causal" and supported else "none"
    where = f"model '{job.model}': train.kernels: liger"
    if job.family != "causal":
        raise KernelError(f"{where} covers decoder-only models; set train.kernels: none for {job.family} models")
    if not cuda:
        raise KernelError(f"{where} needs a CUDA GPU (Triton kernels); use train.kernels: auto or none here")
    if types is None:
        raise KernelError(f"{where}: liger-kernel is not installed (pip install -e '.[gpu]')")
    if not supported:
        raise KernelError(f"{where}: Liger has no kernels for model type {source_model_type!r}; use auto or none")
    return "liger"
