"""Fused training kernels (``train.kernels``: ``auto`` | ``liger`` | ``none``) and compiled decoder layers
(``train.compile``: ``auto`` | true | false).

``liger`` applies Liger-Kernel's Triton kernels to the decoder layers (RMSNorm, SwiGLU, RoPE) through
``TrainingArguments.use_liger_kernel``; TRL keeps its own fused LM-head loss. The kernels save memory as well as
time: Liger's RMSNorm keeps its bf16 input instead of an fp32 copy, its SwiGLU keeps gate and up but not the SiLU
output (kdsum.gpu.memory plans with ``kernels``). ``auto`` takes Liger on CUDA when it is installed (the ``[gpu]``
extra) and supports the architecture, and nothing otherwise; ``liger`` refuses to run without them, in one line.

``train.compile`` compiles each decoder layer in place (``nn.Module.compile``: the trainer, the optimizer and PEFT
keep the same modules; one graph per layer, reused by all of them). Inductor fuses what the profile shows between
the matmuls (LoRA's dtype casts and adds, residual adds). ``auto`` compiles causal models on CUDA; on a CPU the
compile time is not paid back by a tiny model's few steps.

With bf16 mixed precision and uncompiled layers the LoRA branches take their bf16 inputs as they are
(:func:`keep_adapter_inputs_16bit`), not PEFT's float32 copy of them, which autocast casts straight back to bf16 for
the matmul (compiled layers fuse those casts already).

The training stage also turns on PyTorch's expandable segments (``PYTORCH_CUDA_ALLOC_CONF``, unless set): packed
batches change shape every step, and the caching allocator otherwise keeps blocks of every earlier shape.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from kdsum.config.spec import Job
from kdsum.errors import KdsumError

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


def resolve_compile(job: Job, cuda: bool | None = None) -> bool:
    """Whether the training job compiles its decoder layers (see the module docstring)."""
    choice = job.train.compile
    if choice == "auto":
        cuda = torch.cuda.is_available() if cuda is None else cuda
        return bool(cuda and job.family == "causal")
    return bool(choice)


# PEFT's own input casts to float32 adapters (True): for A/B measurements (benchmarks/bench_train.py) only
ADAPTER_INPUT_CAST = False


def keep_adapter_inputs_16bit(model) -> int:
    """Stop PEFT casting each LoRA branch's bf16 input to its float32 adapter's dtype (``cast_input_dtype_enabled``);
    returns the number of LoRA layers changed. Under bf16 autocast the float32 copy is cast back to bf16 for
    ``lora_A``'s matmul, so it changes no product's inputs; it only adds a float32 copy of every projection's input,
    and the dropout mask computed on it, per branch and step (the profile's copies and casts). Only for a trainer
    that runs in bf16 autocast: without autocast a bf16 input would meet float32 weights."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if ADAPTER_INPUT_CAST:
        return 0
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    return len(layers)


def compile_decoder_layers(model) -> int:
    """Compile every decoder layer of ``model`` in place; returns how many."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile()
    return len(layers)


ALLOCATOR_SETTING = "expandable_segments:True"


def configure_cuda_allocator() -> None:
    """Expandable segments for training, unless the user set the allocator. Before CUDA starts the environment
    variable is enough; after it, the allocator is told directly."""
    if os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        return
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR_SETTING
    if torch.cuda.is_initialized():
        torch.cuda.memory._set_allocator_settings(ALLOCATOR_SETTING)
