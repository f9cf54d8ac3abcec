"""A decode-attention kernel over a ragged KV buffer (Triton), for kdsum.generation.engine.greedy on CUDA.

fast_decode keeps one KV buffer per layer, ``[B, Hkv, S, D]``, prompts right-aligned: row ``b``'s keys are the
columns ``start[b] .. col``. Batched matmuls over the whole buffer read every column of every row, most of them the
shorter prompts' padding (for the 499 Korean dev prompts, 37% of the columns hold keys). This kernel reads only each
row's own range: one program per (row, KV head) computes the ``G`` query heads of that KV head (grouped-query
attention, no head repeat) with an online softmax in float32, loading each K/V block once (flash-decoding without the
split, since B x Hkv programs already fill the GPU).

:func:`available` says whether it can run (Triton importable, CUDA, 16-bit buffers); fast_decode falls back to its
batched matmuls elsewhere (and always in float32, where its tokens equal ``model.generate``'s exactly).
"""

from __future__ import annotations

import functools

import torch

BLOCK_N = 64  # key columns per block


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def ragged_decode(
        q_ptr, k_ptr, v_ptr, o_ptr, start_ptr, col_ptr, scale,
        sqb, sqh, sqg, skb, skh, sks, svb, svh, svs, sob, soh, sog,
        G: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        h = tl.program_id(1)
        start = tl.load(start_ptr + b)
        col = tl.load(col_ptr)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, D)
        n = tl.arange(0, BLOCK_N)
        q = tl.load(q_ptr + b * sqb + h * sqh + g[:, None] * sqg + d[None, :], mask=g[:, None] < G, other=0.0)
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_sum = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        k_row = k_ptr + b * skb + h * skh
        v_row = v_ptr + b * svb + h * svh
        for c0 in range(start, col + 1, BLOCK_N):
            cols = c0 + n
            valid = cols <= col
            k = tl.load(k_row + cols[:, None] * sks + d[None, :], mask=valid[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_G, BLOCK_N], float32
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(p, 1)
            v = tl.load(v_row + cols[:, None] * svs + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        out = acc / l_sum[:, None]
        o = o_ptr + b * sob + h * soh + g[:, None] * sog + d[None, :]
        tl.store(o, out.to(o_ptr.dtype.element_ty), mask=g[:, None] < G)

    return ragged_decode


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available(buffer: torch.Tensor) -> bool:
    """Whether :func:`ragged_attention` is the decode step's default for this KV buffer (CUDA, bf16/fp16, Triton
    installed). It also runs in float32 (IEEE products, no TF32), but there fast_decode keeps its matmuls."""
    return buffer.is_cuda and buffer.dtype in (torch.bfloat16, torch.float16) and _triton_importable()


def ragged_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, col: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of one query step: ``q`` ``[B, Hkv, G, D]`` over the columns ``start[b] .. col`` (inclusive) of the
    buffers ``k``, ``v`` ``[B, Hkv, S, D]``; ``start`` ``[B]`` and ``col`` ``[1]`` are device tensors (read by the
    kernel, so a captured CUDA graph follows them). Returns ``[B, Hkv, G, D]`` in ``q``'s dtype."""
    b, hkv, g, d = q.shape
    assert k.stride(3) == 1 and v.stride(3) == 1 and q.stride(3) == 1, "the head dimension must be contiguous"
    out = torch.empty_like(q)
    _kernel()[(b, hkv)](
        q, k, v, out, start, col, float(scale),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        G=g, BLOCK_G=max(16, 1 << (g - 1).bit_length()), BLOCK_N=BLOCK_N, D=d, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4, num_stages=2,
    )  # fmt: skip
    return out
