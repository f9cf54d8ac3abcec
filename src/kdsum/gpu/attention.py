"""Attention implementations for training: ``train.attention`` in the config.

``sdpa`` is transformers' default. With packing (TRL's best-fit-decreasing, padding-free rows), transformers
builds a dense block-diagonal ``T x T`` mask from the restarting ``position_ids`` of each packed row; SDPA then
cannot use its flash kernel and spends attention FLOPs on every pair of tokens in the row
(docs/BENCHMARKS.md section 1).

``varlen`` (registered here as ``kdsum_varlen``) runs packed, padding-free rows through PyTorch's
variable-length flash-attention kernel (``torch.nn.attention.varlen.varlen_attn``, or the same aten op with its
backward on torch versions without that module), driven by the sequence boundaries that TRL's collator passes
(``cu_seq_lens_q/k``, or derived from ``position_ids``): no mask, no cross-sequence FLOPs. Anything else (padded
batches, a KV cache during generation) goes through transformers' SDPA function unchanged, so one model works for
every batch shape. On the CPU the kernel is replaced by a per-sequence SDPA reference (slow, exact: for tests).

``auto`` picks ``varlen`` for causal models trained with packing on CUDA, else ``sdpa``; ``eager`` is the plain
matmul path (debugging). The choice is recorded in ``train_metrics.json`` (``attention_effective``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from kdsum.config.spec import Job
from kdsum.errors import KdsumError

VARLEN = "kdsum_varlen"
CHOICES = ("auto", "sdpa", "eager", "varlen")


class AttentionError(KdsumError, ValueError):
    """A ``train.attention`` value the pipeline does not know."""


def resolve_attention(job: Job) -> str:
    """The attention implementation a training job uses: 'sdpa', 'eager' or 'varlen' (see module docstring)."""
    choice = job.train.attention
    if choice not in CHOICES:
        raise AttentionError(f"model '{job.model}': train.attention must be one of {CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    packed_causal = job.family == "causal" and job.train.packing
    return "varlen" if packed_causal and torch.cuda.is_available() else "sdpa"


def transformers_name(choice: str) -> str:
    """The name under which transformers knows the implementation (registering ours on first use)."""
    if choice == "varlen":
        return register_varlen()
    return choice


@functools.cache
def _varlen_attn():
    """(``torch.nn.attention.varlen.varlen_attn``, its parameter names), or (None, ()) on older torch. Read once:
    the forward of every layer asks, and the keyword names differ between torch releases."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale):
    """Causal attention over packed sequences (q: [T, H, D], k/v: [T, Hkv, D]) -> [T, H, D]."""
    if q.is_cuda:
        varlen_attn, params = _varlen_attn()
        if varlen_attn is None:
            return _flash_varlen_autograd().apply(q, k, v, cu_q, cu_k, max_q, max_k, scale)
        kw: dict[str, Any] = {"scale": scale} if "scale" in params else {}
        if "window_size" in params:
            kw["window_size"] = (-1, 0)  # causal: no keys after the query
        elif "is_causal" in params:
            kw["is_causal"] = True
        if k.shape[1] != q.shape[1]:
            if "enable_gqa" in params:
                kw["enable_gqa"] = True
            else:
                rep = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)
    # CPU reference: each sequence on its own through SDPA
    outs = []
    rep = q.shape[1] // k.shape[1]
    for s, e in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), strict=True):
        qs, ks, vs = (x[s:e].transpose(0, 1) for x in (q, k, v))
        if rep > 1:
            ks, vs = ks.repeat_interleave(rep, dim=0), vs.repeat_interleave(rep, dim=0)
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1)
        )
    return torch.cat(outs, dim=0)


_AUTOGRAD_FN: Any = None


def _flash_varlen_autograd():
    """torch without ``torch.nn.attention.varlen``: the aten flash op and its backward as an autograd Function."""
    global _AUTOGRAD_FN
    if _AUTOGRAD_FN is None:

        class FlashVarlen(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, scale):
                if k.shape[1] != q.shape[1]:
                    rep = q.shape[1] // k.shape[1]
                    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
                    q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale
                )
                ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, rng, unused)
                ctx.args = (max_q, max_k, scale)
                return out

            @staticmethod
            def backward(ctx, grad):
                q, k, v, out, lse, cu_q, cu_k, rng, unused = ctx.saved_tensors
                max_q, max_k, scale = ctx.args
                dq, dk, dv = torch.ops.aten._flash_attention_backward(
                    grad.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, 0.0, True, rng, unused, scale=scale
                )
                return dq, dk, dv, None, None, None, None, None

        _AUTOGRAD_FN = FlashVarlen
    return _AUTOGRAD_FN


def varlen_attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention interface (query/key/value: [B, H, T, D]). Padding-free packed rows (B == 1, no
    mask, no cache) go through the varlen kernel; anything else through transformers' SDPA function."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    pos = kwargs.get("position_ids")
    B, H, T, D = query.shape
    self_attention = key.shape[2] == T  # no KV cache
    if cu_q is None and attention_mask is None and pos is not None and B == 1 and T > 1 and self_attention:
        starts = (pos[0] == 0).nonzero().flatten()
        if starts.numel() > 1:  # packed without the collator's boundaries: derive them (one host sync)
            cu_q = cu_k = torch.cat([starts, starts.new_tensor([T])]).to(torch.int32)
            max_q = max_k = int(cu_q.diff().max())
    if cu_q is None or attention_mask is not None or B != 1 or not self_attention or dropout:
        if attention_mask is None and self_attention:
            is_causal = True if is_causal is None else is_causal
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    cu_q = cu_q.to(device=query.device, dtype=torch.int32)
    cu_k = (cu_k if cu_k is not None else cu_q).to(device=query.device, dtype=torch.int32)
    max_q = int(max_q) if max_q is not None else int(cu_q.diff().max())
    max_k = int(max_k) if max_k is not None else max_q
    q = query.transpose(1, 2).reshape(T, H, D)
    k = key.transpose(1, 2).reshape(T, key.shape[1], D)
    v = value.transpose(1, 2).reshape(T, value.shape[1], D)
    in_dtype = q.dtype
    if q.is_cuda and in_dtype not in (torch.float16, torch.bfloat16):
        # the flash kernel takes 16-bit inputs only; QLoRA keeps norms in fp32 after
        # prepare_model_for_kbit_training, so q/k/v arrive in fp32 (transformers' flash-attention path casts too)
        target = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        q, k, v = q.to(target), k.to(target), v.to(target)
    out = _flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scaling)
    return out.to(in_dtype).reshape(1, T, H, D), None


def varlen_mask(
    batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, **kwargs
):
    """No mask for padding-free rows (the kernel reads the boundaries); the SDPA mask when there is padding."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function or causal_mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )


def register_varlen() -> str:
    """Register ``kdsum_varlen`` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
    return VARLEN


def set_attention(model, choice: str) -> str:
    """Switch a loaded model (or PEFT wrapper) to ``choice``; returns transformers' name for it."""
    name = transformers_name(choice)
    base = model
    while hasattr(base, "get_base_model") and base is not base.get_base_model():
        base = base.get_base_model()
    try:
        base.set_attn_implementation(name)
    except (AttributeError, ValueError, TypeError):  # older API: every submodule reads config._attn_implementation
        for m in base.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                cfg._attn_implementation = name
    return getattr(base.config, "_attn_implementation", name)
