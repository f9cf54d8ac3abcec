"""Beam search of Llama / Qwen2 / Qwen3 / Mistral causal LMs with a static KV cache (``generation.engine: auto``).

The sequences ``model.generate(num_beams=K)`` returns, without its per-step costs (the prompt's KV cache copied K
times and reordered with every beam's history each step, DynamicCache's ``torch.cat``, transformers' ``repeat_kv``
copy of the cache per layer, and the Python that issues a step more slowly than the GPU runs it):

* prefill: once per prompt (not once per beam) with kdsum.generation.engine.greedy's prefill (packed through the varlen kernel,
  or in padded groups); the prompt's keys and values go to a buffer per layer ``[Bp, Hkv, P, D]`` shared by the
  prompt's K beams (prompts right-aligned, P the prompt width rounded up so batches share a CUDA graph), which never
  moves;
* the generated tokens' keys and values go to a buffer per beam ``[Bp * K, Hkv, N, D]`` (N: ``max_new_tokens``
  rounded up); a decode step (:func:`_forward`) attends over both parts with one joint softmax (the prompt part in
  grouped form, the K beams' queries of a prompt against its one prompt buffer), and then writes the generated part
  reordered by the chosen parent beams into a second buffer (``index_select``); the two swap roles every step;
* beam bookkeeping (:func:`_choose`): transformers' ``_beam_search`` (5.x, the vectorised one) op for op, in float32
  (log_softmax, the running scores' ``[0, -1e9, ...]`` start, the top ``max(2, 1 + n_eos) * K`` continuations, the
  ``-1e9`` masks, the length penalty over the generated length, the early-stopping heuristic, the stop condition),
  with tensors only, so that on CUDA the whole step (forward, bookkeeping, reorder) is captured once per parity
  into a ``torch.cuda.CUDAGraph`` and replayed; on the CPU it runs eagerly. A step after generate's loop would have
  stopped changes nothing (the finished hypotheses are frozen), so "stopped" is read every
  :data:`kdsum.generation.engine.greedy.CHECK_EVERY` steps only;
* output: the best finished hypothesis of each prompt, ``[Bp, P + n_new]`` with n_new the longest of them, filled
  after its end with what generate fills (``pad_token_id``, or ``eos_token_id[0]`` when the pad id is 0: generate's
  ``pad_token_id or eos_token_id[0]``).

:func:`supports_beams` says when the engine applies (beam search, no sampling, penalties or logits processors, one
returned sequence, a model :func:`kdsum.generation.engine.greedy.model_refusal` accepts); elsewhere kdsum.generation.predict calls
``model.generate``.
"""

from __future__ import annotations

import torch

from kdsum.generation.engine import greedy as fast_decode
from kdsum.generation.engine.greedy import (
    _BMM_OUT_DTYPE,
    CHECK_EVERY,
    ROUND,
    _packs,
    _prefill_grouped,
    _prefill_packed,
    _sync,
)

KNOWN_KWARGS = fast_decode.KNOWN_KWARGS | {"early_stopping", "num_return_sequences"}
# GenerationConfig fields that add a logits processor or change the search when set to anything but these
_CHANGES_BEAMS = {k: v for k, v in fast_decode._CHANGES_GREEDY.items() if k != "num_beams"}
_CHANGES_BEAMS.update(num_beam_groups=1, diversity_penalty=0.0, constraints=None, force_words_ids=None, low_memory=None)
_CHANGES_BEAMS.update(max_time=None, output_scores=None, return_dict_in_generate=None)
NEG = -1.0e9  # transformers' "very large negative" score


def _setting(model, kwargs: dict, name: str, default):
    value = kwargs[name] if name in kwargs else getattr(model.generation_config, name, None)
    return default if value is None else value


def supports_beams(model, job, kwargs: dict, processors) -> bool:
    """Whether :func:`beam_generate` gives ``model.generate(**kwargs)``'s sequences for this job: beam search
    (``num_beams > 1``, no sampling) of a supported causal model, no logits processors or penalties, one returned
    sequence, ``generation.engine`` not ``generate``."""
    if getattr(job.generation, "engine", "auto") != "auto" or job.family != "causal" or processors:
        return False
    if set(kwargs) - KNOWN_KWARGS or fast_decode.model_refusal(model) is not None:
        return False
    beams = _setting(model, kwargs, "num_beams", 1)
    if not isinstance(beams, int) or beams < 2 or "max_new_tokens" not in kwargs or "pad_token_id" not in kwargs:
        return False
    if kwargs.get("eos_token_id") is None or _setting(model, kwargs, "early_stopping", False) not in (
        True,
        False,
        "never",
    ):
        return False
    merged = {k: getattr(model.generation_config, k, v) for k, v in _CHANGES_BEAMS.items()}
    merged.update({k: kwargs[k] for k in _CHANGES_BEAMS if k in kwargs})
    # None: unset (transformers 5's GenerationConfig leaves its fields unset; generate applies the defaults)
    return all(merged[k] is None or merged[k] == v or (v is None and not merged[k]) for k, v in _CHANGES_BEAMS.items())


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for 4-d tensors in float32: on CUDA a 16-bit product straight into float32 (``bmm``'s
    ``out_dtype``), elsewhere the product then a cast."""
    if a.is_cuda and a.dtype != torch.float32 and _BMM_OUT_DTYPE:
        lead = a.shape[:2]
        out = torch.bmm(a.flatten(0, 1), b.flatten(0, 1), out_dtype=torch.float32)
        return out.view(*lead, *out.shape[1:])
    return torch.matmul(a, b).float()


def _forward(model, st: dict, gen_kv) -> torch.Tensor:
    """The model's forward for one new token per beam (``st["tok"]``, ``[R]``, R = Bp * K), written from its
    modules: its keys and values go to column ``st["col"]`` of the generated part ``gen_kv``; attention over the
    prompt part (``st["prompt_kv"]``, one per prompt) and the generated part with one softmax. The float32 logits
    ``[R, V]``."""
    m, k_beams = model.model, st["k"]
    h = m.embed_tokens(st["tok"][:, None])  # [R, 1, hidden]
    r = h.shape[0]
    bp = r // k_beams
    cos, sin = m.rotary_emb(h, st["pos"])
    cos, sin = cos[:, None], sin[:, None]
    gen_masked = (st["gen_arange"] > st["col"])[None, None, None, :].expand(r, 1, 1, -1)
    masked = torch.cat([st["prompt_masked"], gen_masked], dim=-1)  # [R, 1, 1, P + N]
    for layer, (pk, pv), (gk, gv) in zip(m.layers, st["prompt_kv"], gen_kv, strict=True):
        a = layer.self_attn
        hkv, p, d = pk.shape[1], pk.shape[2], pk.shape[3]
        q, k, v = fast_decode.qkv_one_token(a, layer.input_layernorm(h), hkv, d, cos, sin)  # q: [R, heads, 1, D]
        gk.index_copy_(2, st["col"], k)
        gv.index_copy_(2, st["col"], v)
        g = q.shape[1] // hkv
        qg = q.reshape(r, hkv, g, d)  # head h attends with kv head h // G, as repeat_kv orders them
        # the prompt part: a prompt's K beams' queries together against its one buffer, [Bp, Hkv, K * G, D]
        qp = qg.view(bp, k_beams, hkv, g, d).transpose(1, 2).reshape(bp, hkv, k_beams * g, d)
        wp = fast_decode._scores(qp, pk).view(bp, hkv, k_beams, g, p).transpose(1, 2).reshape(r, hkv, g, p)
        w = torch.cat([wp, fast_decode._scores(qg, gk)], dim=-1) * getattr(a, "scaling", d**-0.5)
        w = w.masked_fill(masked, torch.finfo(w.dtype).min)
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        wp, wg = w[..., :p], w[..., p:]
        wp = wp.reshape(bp, k_beams, hkv, g, p).transpose(1, 2).reshape(bp, hkv, k_beams * g, p)
        op = _mm32(wp, pv).view(bp, hkv, k_beams, g, d).transpose(1, 2).reshape(r, hkv, g, d)
        o = (op + _mm32(wg, gv)).to(q.dtype).reshape(r, 1, -1)  # [R, 1, heads * D]
        h = h + a.o_proj(o)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(m.norm(h))[:, -1].float()


def _penalised(scores: torch.Tensor, st: dict, table: str) -> torch.Tensor:
    """``scores / L ** length_penalty`` as generate computes it with a Python float L ** lp: on CUDA a tensor
    divided by a CPU scalar is multiplied by the scalar's float32 reciprocal (``div_true_kernel_cuda``), on the CPU
    divided by it."""
    if scores.is_cuda:
        return scores * st[table + "_inv"].index_select(0, st["n_gen"])[:, None]
    return scores / st[table].index_select(0, st["n_gen"])[:, None]


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # generate's _gather_beams
    while idx.dim() < t.dim():
        idx = idx.unsqueeze(-1)
    return torch.take_along_dim(t, idx, dim=1)


def _choose(logits: torch.Tensor, st: dict) -> None:
    """One step of generate's beam bookkeeping on every beam's float32 logits ``[R, V]`` (``_beam_search``'s b.-g.),
    in place on ``st``; after the step generate would have stopped at, the finished hypotheses no longer change."""
    bp, k_beams = st["run_scores"].shape
    n, vocab = st["n_gen"], logits.shape[-1]
    live = ~st["stopped"]
    log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
    hold = st["is_end"] & (n < st["min_new"])  # MinNewTokensLengthLogitsProcessor
    log_probs = torch.where(hold, -torch.inf, log_probs)
    log_probs = log_probs.view(bp, k_beams, vocab) + st["run_scores"][:, :, None]
    log_probs = log_probs.reshape(bp, -1)
    # c. top-K continuations (_get_top_k_continuations)
    topk_log_probs, topk_indices = torch.topk(log_probs, k=st["top_mask"].shape[0])
    parent = torch.div(topk_indices, vocab, rounding_mode="floor")
    topk_ids = topk_indices % vocab
    topk_seq = _gather(st["run_seq"], parent)
    topk_seq.scatter_(2, n.view(1, 1, 1).expand(bp, topk_ids.shape[1], 1), topk_ids[:, :, None])
    # d. stopping criteria: an end id, or max_length reached
    hits = st["is_end"][topk_ids] | (n + 1 >= st["max_new"])
    # e. running beams (_get_running_beams_for_next_iteration)
    topk_running = topk_log_probs + hits.to(torch.float32) * NEG
    nxt = torch.topk(topk_running, k=k_beams)[1]
    run_seq, run_scores = _gather(topk_seq, nxt), _gather(topk_running, nxt)
    parents = (_gather(parent, nxt) + st["offset"]).view(-1)
    # f. finished hypotheses (_update_finished_beams)
    did_finish = hits & st["top_mask"][None, :]
    scored = _penalised(topk_log_probs, st, "pen")
    full = torch.all(st["fin"], dim=-1, keepdim=True) & st["early_true"]
    scored += full.to(torch.float32) * NEG
    scored += (~st["heur"]).to(torch.float32) * NEG
    scored += (~did_finish) * NEG
    merged_scores = torch.cat((st["fin_scores"], scored), dim=1)
    best = torch.topk(merged_scores, k=k_beams)[1]
    seqs = _gather(torch.cat((st["seqs"], topk_seq), dim=1), best)
    fin_scores = _gather(merged_scores, best)
    fin_len = _gather(torch.cat((st["fin_len"], (n + 1).expand(bp, topk_ids.shape[1])), dim=1), best)
    fin = _gather(torch.cat((st["fin"], did_finish), dim=1), best)
    # g. the early-stopping heuristic (_check_early_stop_heuristic) and the loop's condition
    best_running = _penalised(run_scores[:, :1], st, "heur_pen")
    worst = torch.where(fin, torch.min(fin_scores, dim=1, keepdim=True)[0], NEG)
    heur = st["heur"] & torch.any(best_running > worst, dim=-1, keepdim=True)
    go_on = torch.any(heur) & ~(torch.all(fin) & st["early_true"]) & ~torch.all(hits)
    for name, new in (("seqs", seqs), ("fin_scores", fin_scores), ("fin_len", fin_len), ("fin", fin), ("heur", heur)):
        st[name].copy_(torch.where(live, new, st[name]))
    st["stopped"].logical_or_(~go_on)
    st["run_seq"].copy_(run_seq)
    st["run_scores"].copy_(run_scores)
    st["parents"].copy_(parents)
    st["tok"].copy_(run_seq.view(-1, run_seq.shape[-1]).gather(1, n.view(1, 1).expand(parents.shape[0], 1))[:, 0])
    n.add_(1)


def _step(model, st: dict, src, dst) -> None:
    """One decode step: the forward of the running beams' last tokens over ``src``'s generated part, the beam
    bookkeeping, and ``src`` reordered by the chosen parents into ``dst`` (tensors only: CUDA-graph safe)."""
    logits = _forward(model, st, src)
    _choose(logits, st)
    for (sk, sv), (dk, dv) in zip(src, dst, strict=True):
        torch.index_select(sk, 0, st["parents"], out=dk)
        torch.index_select(sv, 0, st["parents"], out=dv)
    st["col"].add_(1)
    st["pos"].add_(1)


class _Engine:
    """The state of one (prompts, beams, prompt width, max_new_tokens, settings) and, on CUDA, its two captured
    steps (one per direction between the two generated-part buffers)."""

    def __init__(self, model, key: tuple, cache) -> None:
        bp, k_beams, p, n_buf, max_new, ends, fill, min_new, lp, early = key
        dev = cache.layers[0].keys.device
        r, top = bp * k_beams, max(2, 1 + len(ends)) * k_beams

        def buffer(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
            return torch.zeros((rows, t.shape[1], cols, t.shape[3]), dtype=t.dtype, device=dev)

        prompt_kv = [(buffer(c.keys, bp, p), buffer(c.values, bp, p)) for c in cache.layers]
        gen = [[(buffer(c.keys, r, n_buf), buffer(c.values, r, n_buf)) for c in cache.layers] for _ in range(2)]
        is_end = torch.zeros(model.lm_head.out_features, dtype=torch.bool, device=dev)
        is_end[torch.tensor(ends, device=dev)] = True
        long, f32 = dict(dtype=torch.long, device=dev), dict(dtype=torch.float32, device=dev)
        # generate's L ** length_penalty (Python floats, L the generated length) and their float32 reciprocals
        pen = [float((t + 1) ** lp) for t in range(max_new)]
        heur_pen = [float(max_new**lp) if early == "never" and lp > 0.0 else x for x in pen]
        one = torch.tensor(1.0, dtype=torch.float32)
        self.st = dict(
            k=k_beams, prompt_kv=prompt_kv, tok=torch.zeros(r, **long), col=torch.zeros(1, **long),
            pos=torch.zeros(r, 1, **long), prompt_masked=torch.zeros(r, 1, 1, p, dtype=torch.bool, device=dev),
            gen_arange=torch.arange(n_buf, **long), is_end=is_end, min_new=torch.tensor(min_new, **long),
            max_new=torch.tensor(max_new, **long), n_gen=torch.zeros(1, **long),
            top_mask=torch.arange(top, device=dev) < k_beams, offset=torch.arange(bp, **long)[:, None] * k_beams,
            early_true=torch.tensor(early is True, device=dev), stopped=torch.zeros(1, dtype=torch.bool, device=dev),
            run_seq=torch.full((bp, k_beams, max_new), fill, **long), run_scores=torch.zeros(bp, k_beams, **f32),
            seqs=torch.full((bp, k_beams, max_new), fill, **long), fin_scores=torch.zeros(bp, k_beams, **f32),
            fin_len=torch.zeros(bp, k_beams, **long), fin=torch.zeros(bp, k_beams, dtype=torch.bool, device=dev),
            heur=torch.ones(bp, 1, dtype=torch.bool, device=dev), parents=torch.zeros(r, **long),
            pen=torch.tensor(pen, **f32), heur_pen=torch.tensor(heur_pen, **f32),
            pen_inv=(one / torch.tensor(pen, dtype=torch.float32)).to(dev),
            heur_pen_inv=(one / torch.tensor(heur_pen, dtype=torch.float32)).to(dev),
        )  # fmt: skip
        self.gen, self.fill, self.key, self.model, self.graphs = gen, fill, key, model, None
        if dev.type == "cuda":
            self._capture()

    def reset(self) -> None:
        """The search's starting state (generate's step 3): running scores ``[0, -1e9, ...]``, no finished
        hypothesis (scores ``-1e9``), sequences filled."""
        st = self.st
        st["run_scores"].fill_(NEG)
        st["run_scores"][:, 0] = 0.0
        st["fin_scores"].fill_(NEG)
        st["run_seq"].fill_(self.fill)
        st["seqs"].fill_(self.fill)
        for name in ("fin_len", "fin", "stopped", "n_gen", "parents"):
            st[name].zero_()
        st["heur"].fill_(True)

    def _capture(self) -> None:
        saved = {k: v.clone() for k, v in self.st.items() if isinstance(v, torch.Tensor)}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA-graph docs show
            for i in range(2):
                _step(self.model, self.st, self.gen[i % 2], self.gen[1 - i % 2])
                self.st["n_gen"].zero_()  # the warm-up must not index past the sequences
                self.st["col"].zero_()
        torch.cuda.current_stream().wait_stream(side)
        self.graphs = []
        for i in range(2):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                _step(self.model, self.st, self.gen[i], self.gen[1 - i])
            self.graphs.append(graph)
            for k, v in saved.items():
                self.st[k].copy_(v)

    def step(self, i: int) -> None:
        """Decode step ``i`` (1, 2, ...): from buffer ``(i - 1) % 2`` into the other one."""
        src = (i - 1) % 2
        if self.graphs is not None:
            self.graphs[src].replay()
        else:
            _step(self.model, self.st, self.gen[src], self.gen[1 - src])


# one engine at a time, greedy or beams (their KV buffers are large): the last one built, in fast_decode's cache
_cached = fast_decode._cached


@torch.inference_mode()
def beam_generate(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, timings: dict | None = None, **kwargs
) -> torch.Tensor:
    """``model.generate(input_ids=..., attention_mask=..., **kwargs)`` for beam search over a left-padded batch
    (``num_beams``, ``length_penalty`` and ``early_stopping`` from ``kwargs`` or the model's generation_config):
    the ``[B, P + n_new]`` sequences generate returns. ``timings`` (if given) accumulates ``prefill_s`` and
    ``decode_s``."""
    ends = kwargs["eos_token_id"]
    ends = tuple(int(e) for e in (ends if isinstance(ends, (list, tuple)) else [ends]))
    max_new, min_new, pad = kwargs["max_new_tokens"], kwargs.get("min_new_tokens") or 0, int(kwargs["pad_token_id"])
    k_beams = int(_setting(model, kwargs, "num_beams", 1))
    lp, early = float(_setting(model, kwargs, "length_penalty", 1.0)), _setting(model, kwargs, "early_stopping", False)
    fill = pad or ends[0]  # generate's output_fill_value: ``pad_token_id or eos_token_id[0]``
    bp, p = input_ids.shape
    t0 = _sync(input_ids.device)
    lengths = attention_mask.long().sum(dim=1)
    width = -(-p // ROUND) * ROUND  # prompts right-aligned in a buffer of this width
    prefill = (_prefill_packed if _packs(model, input_ids) else _prefill_grouped)(
        model, input_ids, attention_mask, lengths
    )
    first = None
    for cache, logits, rows, tok_row, tok_col, tokens in prefill:
        if first is None:  # the engine (its buffers) for this batch shape, from the first cache's shapes
            key = (bp, k_beams, width, -(-max_new // ROUND) * ROUND, max_new, ends, fill, min_new, lp, early)
            eng = _cached.get("engine")
            if not isinstance(eng, _Engine) or eng.key != key or eng.model is not model:
                _cached.clear()  # free the previous buffers and graphs first
                eng = _cached["engine"] = _Engine(model, key, cache)
            st = eng.st
            first = logits.new_empty(bp, logits.shape[1])  # every prompt's last-position logits
        first[rows] = logits
        for (kbuf, vbuf), lay in zip(st["prompt_kv"], cache.layers, strict=True):  # each token to its row, column
            kbuf.permute(0, 2, 1, 3)[tok_row, tok_col + (width - p)] = tokens(lay.keys)
            vbuf.permute(0, 2, 1, 3)[tok_row, tok_col + (width - p)] = tokens(lay.values)
        del cache, logits
    eng.reset()
    start = (width - lengths).repeat_interleave(k_beams)  # each beam's first real prompt column
    st["prompt_masked"].copy_((torch.arange(width, device=start.device)[None, :] < start[:, None])[:, None, None])
    st["pos"].copy_(lengths.repeat_interleave(k_beams)[:, None])
    st["col"].zero_()
    _choose(first.repeat_interleave(k_beams, dim=0), st)  # generate's first step: K identical rows per prompt
    t1 = _sync(input_ids.device)
    for n in range(1, max_new):
        if n % CHECK_EVERY == 0 and bool(st["stopped"].all()):
            break
        eng.step(n)
    best = st["seqs"][:, 0]
    new = best[:, : int(st["fin_len"][:, 0].max())]
    if timings is not None:
        timings["prefill_s"] = timings.get("prefill_s", 0.0) + t1 - t0
        timings["decode_s"] = timings.get("decode_s", 0.0) + _sync(input_ids.device) - t1
    return torch.cat([input_ids, new], dim=1)
