"""Greedy decoding of Llama / Qwen2 / Qwen3 / Mistral causal LMs with a static KV cache (``generation.engine: auto``).

The same tokens as ``model.generate`` greedy, without its per-step costs (transformers' ``repeat_kv`` copy of the
cache per layer and step when a padding mask is passed, DynamicCache's ``torch.cat``, and the Python that issues a
step more slowly than the GPU runs it):

* prefill: the model's own forward, the first token the argmax of each row's last position. With 16-bit weights on
  CUDA (and on the CPU) every prompt of the batch goes into one padding-free sequence through kdsum.gpu.attention's
  varlen kernel (:func:`_prefill_packed`: no padding FLOPs); otherwise in groups of :data:`PREFILL_ROWS` rows, each
  cut to its own longest prompt (:func:`_prefill_grouped`). Each cached token is copied to its row and column of a
  preallocated buffer per layer ``[B, Hkv, S, D]`` (S: prompt width + ``max_new_tokens``, rounded up so batches
  share a CUDA graph; prompts right-aligned, as left padding puts them);
* decode step (:func:`_step`), written from the model's modules: every row writes the same buffer column (left
  padding), one query attends over the buffer in grouped-query form (q viewed ``[B, Hkv, G, D]``, no head repeat),
  keys before a row's first real token and after the current column masked out; scores and softmax in float32
  (on CUDA a bf16 x bf16 -> float32 batched matmul). With 16-bit weights on CUDA the attention is instead
  kdsum.generation.engine.kernel's Triton kernel, which reads only each row's own columns (:data:`ATTENTION`); the buffer
  is mostly the shorter prompts' padding. The step advances its own state (column, positions, finished
  rows), so on CUDA it is captured once into a ``torch.cuda.CUDAGraph`` and replayed; on CPU it runs eagerly;
* stopping: finished rows get ``pad_token_id``; "all rows finished" is read every :data:`CHECK_EVERY` steps (one
  device sync), and the output is cut where generate would have stopped: ``[B, P + n_new]``, prompt included.

:func:`supports` says when the engine applies (greedy, no penalties or logits processors, a supported architecture
without sliding windows, no unmerged adapter); elsewhere kdsum.generation.predict calls ``model.generate``.
"""

from __future__ import annotations

import math
import time

import torch
from transformers.models.llama.modeling_llama import rotate_half

from kdsum.generation.engine.kernel import available as decode_kernel_available
from kdsum.generation.engine.kernel import ragged_attention

ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral")
CHECK_EVERY = 8  # decode steps between two reads of "all rows finished" (one device sync each)
try:  # bf16 x bf16 -> float32 batched matmul (CUDA)
    _BMM_OUT_DTYPE = torch.ops.aten.bmm.dtype is not None
except (AttributeError, RuntimeError):  # pragma: no cover - older torch
    _BMM_OUT_DTYPE = False
ROUND = 64  # buffer lengths are rounded up to a multiple of this (batches of one size share a graph)
# rows per prefill forward: each group is padded only to its own longest prompt (rows come longest first from
# kdsum.generation.predict), not to the batch's, so a 256-row batch does not attend over the longest row's padding
PREFILL_ROWS = 64
PREFILL = "auto"  # packed | grouped | auto (see _packs)
# decode attention: ragged (kdsum.generation.engine.kernel: each row's own columns), matmul (two batched matmuls over the whole
# buffer), auto (ragged where the kernel runs: CUDA, 16-bit; float32 keeps the matmuls, exact against generate)
ATTENTION = "auto"
# the generate() settings the engine understands; anything else (a cache implementation, ...) goes to generate
KNOWN_KWARGS = {"do_sample", "num_beams", "max_new_tokens", "min_new_tokens", "no_repeat_ngram_size"}
KNOWN_KWARGS |= {"repetition_penalty", "length_penalty", "eos_token_id", "pad_token_id", "temperature", "top_p"}
KNOWN_KWARGS |= {"top_k"}
# GenerationConfig fields (of kwargs or the model's generation_config) that add a logits processor or change the
# search when set to anything but their defaults
_CHANGES_GREEDY = dict(
    num_beams=1, do_sample=False, no_repeat_ngram_size=0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
    min_length=0, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
    forced_eos_token_id=None, sequence_bias=None, exponential_decay_length_penalty=None, guidance_scale=None,
    watermarking_config=None, stop_strings=None, prompt_lookup_num_tokens=None, assistant_model=None,
    penalty_alpha=None, cache_implementation=None, num_return_sequences=1,
)  # fmt: skip


def model_refusal(model) -> str | None:
    """Why the engine cannot decode ``model`` (None: it can)."""
    cfg = getattr(model, "config", None)
    if getattr(model, "peft_config", None) or any(type(m).__module__.startswith("peft") for m in model.modules()):
        return "an unmerged adapter (peft)"
    if cfg is None or cfg.model_type not in ARCHITECTURES or not hasattr(model, "lm_head"):
        return f"architecture {getattr(cfg, 'model_type', None)!r} (supported: {', '.join(ARCHITECTURES)})"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or ()):
        return "layers other than full attention"
    uses_window = getattr(cfg, "use_sliding_window", getattr(cfg, "sliding_window", None) is not None)
    if uses_window and getattr(cfg, "sliding_window", None) is not None:
        return "a sliding window"
    if getattr(model.model.rotary_emb, "rope_type", "default") in ("dynamic", "longrope"):
        return "a RoPE that changes with the sequence length"
    return None


def supports(model, job, kwargs: dict, processors) -> bool:
    """Whether :func:`greedy_generate` gives ``model.generate(**kwargs)``'s tokens for this job (greedy search of a
    supported causal model, no logits processors, ``generation.engine`` not ``generate``)."""
    if getattr(job.generation, "engine", "auto") != "auto" or job.family != "causal" or processors:
        return False
    if set(kwargs) - KNOWN_KWARGS or model_refusal(model) is not None:
        return False
    merged = {k: getattr(model.generation_config, k, v) for k, v in _CHANGES_GREEDY.items()}
    merged.update({k: kwargs[k] for k in _CHANGES_GREEDY if k in kwargs})
    # None: unset (transformers 5's GenerationConfig leaves its fields unset; generate applies the defaults)
    return all(merged[k] is None or merged[k] == v or (v is None and not merged[k]) for k, v in _CHANGES_GREEDY.items())


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``q @ k^T`` for ``[B, Hkv, G, D]`` queries and a ``[B, Hkv, S, D]`` buffer, in float32. On CUDA a bf16 buffer
    is multiplied into float32 scores directly (``bmm``'s ``out_dtype``), as SDPA's kernels keep them, rather than
    rounding the scores to bf16 first."""
    b, h, g, d = q.shape
    if q.is_cuda and q.dtype != torch.float32 and _BMM_OUT_DTYPE:
        kt = k.reshape(b * h, -1, d).transpose(1, 2)
        return torch.bmm(q.reshape(b * h, g, d), kt, out_dtype=torch.float32).view(b, h, g, -1)
    return torch.matmul(q, k.transpose(2, 3)).float()


def _ragged(buffer: torch.Tensor) -> bool:
    """Whether the decode step attends through kdsum.generation.engine.kernel (:data:`ATTENTION`)."""
    return ATTENTION == "ragged" or (ATTENTION == "auto" and decode_kernel_available(buffer))


def qkv_one_token(attn, x: torch.Tensor, hkv: int, d: int, cos: torch.Tensor, sin: torch.Tensor):
    """One new token's query, key and value of an attention module for its normed input ``x`` ``[B, 1, hidden]``:
    q ``[B, heads, 1, D]`` and k ``[B, Hkv, 1, D]`` after the model's RoPE (``cos``/``sin`` ``[B, 1, 1, D]``), v
    ``[B, Hkv, 1, D]``."""
    b = x.shape[0]
    q = attn.q_proj(x).view(b, 1, -1, d)
    k = attn.k_proj(x).view(b, 1, hkv, d)
    v = attn.v_proj(x).view(b, 1, hkv, d).transpose(1, 2)
    if getattr(attn, "q_norm", None) is not None:  # Qwen3: per head, before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # [B, heads, 1, D]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v  # modeling_llama's RoPE (Qwen's too)


def _step(model, st: dict) -> None:
    """One decode step for every row, in place on the state ``st`` (tensors only: CUDA-graph safe)."""
    m, tok, col, pos = model.model, st["tok"], st["col"], st["pos"]
    h = m.embed_tokens(tok[:, None])  # [B, 1, hidden]
    b = h.shape[0]
    cos, sin = m.rotary_emb(h, pos)  # [B, 1, D]
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    keys = st["arange"][None, :]
    masked = ((keys < st["start"][:, None]) | (keys > col))[:, None, None, :]  # [B, 1, 1, S]
    for layer, (kbuf, vbuf) in zip(m.layers, st["kv"], strict=True):
        a = layer.self_attn
        hkv, d = kbuf.shape[1], kbuf.shape[3]
        q, k, v = qkv_one_token(a, layer.input_layernorm(h), hkv, d, cos, sin)
        kbuf.index_copy_(2, col, k)
        vbuf.index_copy_(2, col, v)
        qg = q.reshape(b, hkv, -1, d)  # head h attends with kv head h // G, as repeat_kv orders them
        scale = getattr(a, "scaling", d**-0.5)
        if _ragged(kbuf):  # each row's own columns only (kdsum.generation.engine.kernel)
            o = ragged_attention(qg, kbuf, vbuf, st["start"], col, scale).reshape(b, 1, -1)
        else:
            w = _scores(qg, kbuf) * scale  # [B, Hkv, G, S], float32
            w = w.masked_fill(masked, torch.finfo(w.dtype).min)
            w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
            o = torch.matmul(w, vbuf).reshape(b, 1, -1)  # [B, 1, heads * D]
        h = h + a.o_proj(o)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    logits = model.lm_head(m.norm(h))[:, -1].float()
    nxt = _choose(logits, st)
    st["out"].index_copy_(1, st["n_gen"], nxt[:, None])
    tok.copy_(nxt)
    col.add_(1)
    pos.add_(1)
    st["n_gen"].add_(1)


def _choose(logits: torch.Tensor, st: dict) -> torch.Tensor:
    """Greedy choice with generate's rules: end ids held back before ``min_new_tokens`` (transformers'
    MinNewTokensLengthLogitsProcessor), ``pad_token_id`` for finished rows; marks rows that end now as finished."""
    hold = st["is_end"][None, :] & (st["n_gen"] < st["min_new"])
    nxt = logits.masked_fill(hold, -math.inf).argmax(dim=-1)
    nxt = torch.where(st["done"], st["pad"], nxt)
    st["done"].logical_or_(st["is_end"][nxt])
    return nxt


class _Engine:
    """The state of one (batch size, buffer length, max_new_tokens) and, on CUDA, its captured step."""

    def __init__(self, model, b: int, s: int, max_new: int, end_ids, pad: int, min_new: int, cache) -> None:
        dev = cache.layers[0].keys.device

        def buffer(t: torch.Tensor) -> torch.Tensor:  # [B, Hkv, P, D] -> zeros [B, Hkv, S, D]
            return torch.zeros((b, t.shape[1], s, t.shape[3]), dtype=t.dtype, device=dev)

        kv = [(buffer(lay.keys), buffer(lay.values)) for lay in cache.layers]
        is_end = torch.zeros(model.lm_head.out_features, dtype=torch.bool, device=dev)
        is_end[torch.tensor(end_ids, device=dev)] = True
        long = dict(dtype=torch.long, device=dev)
        self.st = dict(
            kv=kv, tok=torch.zeros(b, **long), col=torch.zeros(1, **long), pos=torch.zeros(b, 1, **long),
            start=torch.zeros(b, **long), n_gen=torch.zeros(1, **long), done=torch.zeros(b, dtype=torch.bool, device=dev),
            out=torch.zeros(b, max_new, **long), arange=torch.arange(s, **long), is_end=is_end,
            pad=torch.tensor(pad, **long), min_new=torch.tensor(min_new, **long),
        )  # fmt: skip
        self.key, self.model, self.graph = (b, s, max_new, tuple(end_ids), pad, min_new, ATTENTION), model, None
        if dev.type == "cuda":
            self._capture()

    def _capture(self) -> None:
        saved = {k: v.clone() for k, v in self.st.items() if k != "kv"}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA-graph docs show
            for _ in range(2):
                _step(self.model, self.st)
                self.st["n_gen"].zero_()  # the warm-up must not index past ``out``
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            _step(self.model, self.st)
        for k, v in saved.items():
            self.st[k].copy_(v)

    def step(self) -> None:
        self.graph.replay() if self.graph is not None else _step(self.model, self.st)


_cached: dict = {}  # one engine at a time, this one or kdsum.generation.engine.beams' (their KV buffers are large): the last one built


def _packs(model, input_ids: torch.Tensor) -> bool:
    """Whether the prefill runs padding-free (:func:`_prefill_packed`): :data:`PREFILL` ``packed``, or ``auto`` with
    16-bit weights on CUDA (the varlen flash kernel's dtypes) or on the CPU (its exact per-sequence reference)."""
    if PREFILL != "auto":
        return PREFILL == "packed"
    return input_ids.device.type == "cpu" or model.lm_head.weight.dtype in (torch.bfloat16, torch.float16)


def _prefill_packed(model, input_ids, attention_mask, lengths):
    """Every row's prompt in one padding-free sequence through kdsum.gpu.attention's varlen kernel (no padding FLOPs,
    no mask). Yields (cache, the rows' last-position logits, the rows, each cached token's buffer row and column, a
    function giving a cached ``[1, Hkv, T, D]`` tensor token-major)."""
    from kdsum.gpu.attention import register_varlen

    b, p = input_ids.shape
    ends = lengths.cumsum(0)
    cu = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
    tok_row = torch.repeat_interleave(torch.arange(b, device=input_ids.device), lengths)
    within = torch.arange(int(ends[-1]), device=input_ids.device) - (ends - lengths)[tok_row]  # position in its row
    longest = int(lengths.max())
    varlen, previous = register_varlen(), model.config._attn_implementation
    model.set_attn_implementation(varlen)
    if model.config._attn_implementation != varlen:  # not switchable: padded groups, never SDPA over one sequence
        model.set_attn_implementation(previous)
        yield from _prefill_grouped(model, input_ids, attention_mask, lengths)
        return
    try:
        out = model(
            input_ids=input_ids[attention_mask.bool()][None], position_ids=within[None], use_cache=True,
            logits_to_keep=ends - 1, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest,
        )  # fmt: skip
    finally:
        model.set_attn_implementation(previous)
    yield (
        out.past_key_values,
        out.logits[0].float(),
        slice(0, b),
        tok_row,
        p - lengths[tok_row] + within,
        _packed_tokens,
    )


def _packed_tokens(t: torch.Tensor) -> torch.Tensor:
    return t[0].transpose(0, 1)  # [1, Hkv, T, D] -> [T, Hkv, D]


def _prefill_grouped(model, input_ids, attention_mask, lengths):
    """The model's own forward over groups of :data:`PREFILL_ROWS` rows, each cut to its longest prompt (left
    padding: the last columns), position ids as generate computes them. Yields what :func:`_prefill_packed` does."""
    b, p = input_ids.shape
    for start in range(0, b, PREFILL_ROWS):
        stop = min(start + PREFILL_ROWS, b)
        width = int(lengths[start:stop].max())
        ids, mask = input_ids[start:stop, -width:], attention_mask[start:stop, -width:]
        position_ids = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True, logits_to_keep=1)
        rows = torch.arange(start, stop, device=ids.device).repeat_interleave(width)
        cols = torch.arange(p - width, p, device=ids.device).repeat(stop - start)
        yield out.past_key_values, out.logits[:, -1].float(), slice(start, stop), rows, cols, _grouped_tokens


def _grouped_tokens(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])  # [g, Hkv, W, D] -> [g * W, Hkv, D]


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@torch.inference_mode()
def greedy_generate(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, timings: dict | None = None, **kwargs
) -> torch.Tensor:
    """``model.generate(input_ids=..., attention_mask=..., **kwargs)`` for greedy search over a left-padded batch,
    through a static cache (and a CUDA graph on CUDA): the ``[B, P + n_new]`` sequences generate returns.
    ``timings`` (if given) accumulates ``prefill_s`` and ``decode_s``."""
    ends = kwargs["eos_token_id"]
    ends = [int(e) for e in (ends if isinstance(ends, (list, tuple)) else [ends])]
    max_new, min_new, pad = kwargs["max_new_tokens"], kwargs.get("min_new_tokens") or 0, int(kwargs["pad_token_id"])
    b, p = input_ids.shape
    t0 = _sync(input_ids.device)
    lengths = attention_mask.long().sum(dim=1)
    prefill = (_prefill_packed if _packs(model, input_ids) else _prefill_grouped)(
        model, input_ids, attention_mask, lengths
    )
    first = None
    for cache, logits, rows, tok_row, tok_col, tokens in prefill:
        if first is None:  # the engine (its buffers) for this batch shape, from the first cache's shapes
            s = -(-(p + max_new) // ROUND) * ROUND
            key = (b, s, max_new, tuple(ends), pad, min_new, ATTENTION)  # the graph holds the attention path
            eng = _cached.get("engine")
            if not isinstance(eng, _Engine) or eng.key != key or eng.model is not model:
                _cached.clear()  # free the previous buffers and graph first
                eng = _cached["engine"] = _Engine(model, b, s, max_new, ends, pad, min_new, cache)
            st = eng.st
            first = logits.new_empty(b, logits.shape[1])  # every row's last-position logits
        first[rows] = logits
        for (kbuf, vbuf), lay in zip(st["kv"], cache.layers, strict=True):  # each token to its row and column
            kbuf.permute(0, 2, 1, 3)[tok_row, tok_col] = tokens(lay.keys)
            vbuf.permute(0, 2, 1, 3)[tok_row, tok_col] = tokens(lay.values)
        del cache, logits
    st["start"].copy_(p - lengths)
    st["col"].fill_(p)
    st["pos"].copy_(lengths[:, None])
    st["n_gen"].zero_()
    st["done"].zero_()
    first = _choose(first, st)
    st["out"][:, 0] = first
    st["tok"].copy_(first)
    st["n_gen"].fill_(1)
    t1 = _sync(input_ids.device)
    for n in range(1, max_new):
        if n % CHECK_EVERY == 0 and bool(st["done"].all()):
            break
        eng.step()
    new = st["out"].clone()
    ended = st["is_end"][new]  # where each row ended (pad after it; a pad that is an end id comes later)
    if bool(ended.any(dim=1).all()):  # generate stops at the step where the last row ends
        new = new[:, : int(ended.int().argmax(dim=1).max()) + 1]
    if timings is not None:
        timings["prefill_s"] = timings.get("prefill_s", 0.0) + t1 - t0
        timings["decode_s"] = timings.get("decode_s", 0.0) + _sync(input_ids.device) - t1
    return torch.cat([input_ids, new], dim=1)
