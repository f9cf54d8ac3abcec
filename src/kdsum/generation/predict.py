"""Prediction: one summary per dialogue from a loaded model (kdsum.models.loading.load_for_generation).

Inputs: kdsum.models.fitting (budgets, chat-template renders, the truncation rule shared with training).

Generation (:func:`generate_summaries`)
---------------------------------------
Rows are sorted by input length, longest first (an out-of-memory batch fails at the start, not after an hour),
generated in batches of ``generation.batch_size`` with the job's generation settings passed explicitly (greedy
unless ``num_beams > 1``; sampling only with ``do_sample``, seeded by ``generation.seed``), and the results are put back in the input order. Causal batches
are padded on the left (:func:`pad_batch`) with the tokenizer's pad token, which is no end id
(kdsum.models.loading.choose_pad_token), so that every row's new tokens start at the same position. Generation stops at
the tokenizer's eos, the template's end of turn (:func:`end_of_turn_ids`: ``<|eot_id|>``, ``<|im_end|>``), every
special token the template writes between two turns (kdsum.models.loading.turn_boundary_ids: ``<|start_header_id|>``,
``<|im_start|>``: a model that opens a new turn has ended its answer) and the model's own end ids.
Foreign-script blocking (``generation.block_foreign_scripts``): kdsum.generation.blocking.
Engine (``generation.engine``): ``auto`` decodes greedy causal batches with kdsum.generation.engine.greedy (a static KV cache and,
on CUDA, a captured decode step: the same tokens as ``model.generate``) where :func:`kdsum.generation.engine.greedy.supports`
says it applies, beam-search causal batches (``num_beams > 1``) with kdsum.generation.engine.beams (the prompt's KV cache once per
prompt, the beams' own in a static buffer, the step and its beam bookkeeping captured on CUDA: the sequences of
``model.generate``) where :func:`kdsum.generation.engine.beams.supports_beams` says it applies, and everything else with
``model.generate``; ``generate`` always uses ``model.generate``.

Post-processing (:func:`postprocess`)
-------------------------------------
Only the new tokens are decoded (the prompt never reaches the output), up to the first end id, with special tokens
skipped; data tokens such as ``#Person1#`` are ordinary added tokens and survive. A think block the model wrote
(Qwen3's ``<think>`` tags are ordinary added tokens, which ``skip_special_tokens`` keeps) is removed
(:func:`strip_think`), then whitespace runs are collapsed, the text is stripped, and a leading label such as
``요약:`` / ``Summary:`` / ``[요약]`` is removed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from kdsum.config.spec import Job
from kdsum.models.fitting import GenerationError, encode_rows, end_of_turn_ids, input_budget, pad_batch, template_kwargs
from kdsum.models.loading import turn_boundary_ids

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# A leading label the model may put before the summary: "요약:", "요약 :", "Summary:", "[요약]", "답변:" ...
_LABEL_RE = re.compile(
    r"^\s*(?:\[\s*(?:대화\s*)?요약(?:문)?\s*\]|\[\s*summary\s*\]|"
    r"(?:대화\s*)?(?:요약(?:문)?|summary|답변|답|answer)\s*[:：])\s*",
    re.IGNORECASE,
)
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK_RE = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)


# --------------------------------------------------------------------------------------------- ordering
def length_sorted_order(lengths: Sequence[int]) -> list[int]:
    """Indices of ``lengths`` longest first; ties keep the input order (stable)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def map_sorted_batches(
    items: Sequence[T],
    lengths: Sequence[int],
    batch_size: int,
    fn: Callable[[list[T]], list[R]],
    progress: bool = False,
    desc: str = "generate",
) -> list[R]:
    """Apply ``fn`` to batches of ``items`` taken longest first; return the results in the input order.

    ``fn`` gets a list of items and must return one result per item, in the same order.
    """
    from tqdm.auto import tqdm

    if len(items) != len(lengths):
        raise ValueError(f"{len(items)} items but {len(lengths)} lengths")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = length_sorted_order(lengths)
    results: list[Any] = [None] * len(items)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, file=sys.stderr):
        idx = order[start : start + batch_size]
        out = fn([items[i] for i in idx])
        if len(out) != len(idx):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(idx)} items")
        for i, r in zip(idx, out, strict=True):
            results[i] = r
    return results


# --------------------------------------------------------------------------------------------- outputs
def strip_think(text: str) -> str:
    """Remove a think block the model emitted before its answer (Qwen3's ``<think>\n\n</think>\n\n``, empty or
    not: what is inside is no summary), an unclosed one (cut by ``max_new_tokens``: no answer came), and any stray
    think tag. ``<think>`` is an ordinary added token of Qwen3's tokenizer, so ``skip_special_tokens`` keeps it."""
    text = _THINK_BLOCK_RE.sub("", text, count=1)
    if _THINK_OPEN in text and _THINK_CLOSE not in text:
        text = text[: text.index(_THINK_OPEN)]
    return text.replace(_THINK_OPEN, " ").replace(_THINK_CLOSE, " ")


def postprocess(text: str) -> str:
    """Strip a think block, collapse whitespace runs, strip, and remove a leading label such as ``요약:``."""
    text = " ".join(strip_think(text).split())
    for _ in range(2):  # "요약: 요약: ..." happens
        new = _LABEL_RE.sub("", text, count=1)
        if new == text:
            break
        text = new
    return text.strip()


def decode_new_tokens(
    tokenizer, sequences: torch.Tensor, prompt_width: int, family: str, end_ids: Sequence[int] = ()
) -> list[str]:
    """Decode only what the model generated: for causal models everything after the (left-padded) prompt, up to
    the first of ``end_ids`` (causal: the end of turn; what follows is padding), special tokens skipped, then
    :func:`postprocess` (think blocks, whitespace, labels)."""
    new = sequences[:, prompt_width:] if family == "causal" else sequences
    rows = []
    for row in new.tolist():
        stop = next((k for k, t in enumerate(row) if t in end_ids), len(row))
        rows.append(row[:stop])
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [postprocess(t) for t in texts]


def _eos_ids(tokenizer, model, kwargs: dict | None = None) -> list[int]:
    """The ids that stop generation: the tokenizer's eos, the template's end of turn (:func:`end_of_turn_ids`), the
    template's turn boundaries (kdsum.models.loading.turn_boundary_ids: a new turn's start and header) and the
    model's own end ids (e.g. Llama-3.2's three)."""
    ids: list[int] = []
    turn_ends = end_of_turn_ids(tokenizer, kwargs) if kwargs is not None else []
    turn_ends += turn_boundary_ids(tokenizer, kwargs) if kwargs is not None else []
    for cand in (tokenizer.eos_token_id, turn_ends, getattr(model.generation_config, "eos_token_id", None)):
        for i in cand if isinstance(cand, (list, tuple)) else [cand]:
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise GenerationError("the tokenizer has no eos token: generation would never stop before max_new_tokens")
    return ids


def generation_kwargs(job: Job, tokenizer, model) -> dict:
    """The generate() settings, all explicit: the job's GenerationConfig fields, eos from the tokenizer plus the
    chat template's end of turn and the model's own end ids (:func:`_eos_ids`), pad id set (never an end id where
    the tokenizer has a pad token: kdsum.models.loading.load_tokenizer)."""
    g = job.generation
    eos = _eos_ids(tokenizer, model, template_kwargs(job) if job.family == "causal" else None)
    return dict(
        do_sample=g.do_sample,
        num_beams=g.num_beams,
        max_new_tokens=g.max_new_tokens,
        no_repeat_ngram_size=g.no_repeat_ngram_size,
        repetition_penalty=g.repetition_penalty,
        length_penalty=g.length_penalty,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        # a hub generation_config's sampling knobs never apply: greedy/beam search ignores them, and sampling uses
        # exactly the job's temperature and top_p (top_k=0: no top-k cut behind the job's back)
        temperature=g.temperature if g.do_sample else None,
        top_p=g.top_p if g.do_sample else None,
        top_k=0 if g.do_sample else None,
    )


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _logits_processors(tokenizer, keep_tokens: Iterable[str], block: bool):
    if not block:
        return None
    from transformers import LogitsProcessorList

    from kdsum.generation.blocking import BlockTokensProcessor, foreign_token_mask

    return LogitsProcessorList([BlockTokensProcessor(foreign_token_mask(tokenizer, keep_tokens))])


# SDPA kernels for generation on CUDA. Not cuDNN's: it builds a graph for every new shape, and the key length grows
# by one every decode step (measured on an H200: 5.6 ms of CPU per attention call, most of a decode step).
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def _sdpa_backends(device: torch.device):
    """The context that restricts SDPA to :data:`SDPA_BACKENDS` on CUDA (a no-op elsewhere)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name) for name in SDPA_BACKENDS])


def choose_engine(model, job: Job, kwargs: dict, processors) -> str:
    """``fast`` (kdsum.generation.engine.greedy, greedy) or ``beams`` (kdsum.generation.engine.beams, beam search) where ``generation.engine:
    auto`` and that engine applies, else ``generate``."""
    from kdsum.generation.engine import beams as fast_beams
    from kdsum.generation.engine import greedy as fast_decode

    if fast_decode.supports(model, job, kwargs, processors):
        return "fast"
    return "beams" if fast_beams.supports_beams(model, job, kwargs, processors) else "generate"


def _batch_generator(
    model, tokenizer, job: Job, kwargs: dict, processors, engine: str = "generate", timings: dict | None = None
) -> Callable[[list[list[int]]], list[str]]:
    """The function that generates one batch of encoded inputs (padded on the family's side) and decodes it, with
    ``model.generate``, (``engine="fast"``) kdsum.generation.engine.greedy or (``engine="beams"``) kdsum.generation.engine.beams, which add
    their prefill and decode seconds to ``timings``."""
    from kdsum.generation.engine.beams import beam_generate
    from kdsum.generation.engine.greedy import greedy_generate

    side = "left" if job.family == "causal" else "right"
    device = _model_device(model)
    model.eval()

    def run(batch: list[list[int]]) -> list[str]:
        ids, mask = pad_batch(batch, kwargs["pad_token_id"], side)
        with _sdpa_backends(device):  # the engine's prefill is the model's own forward
            if engine == "fast":
                out = greedy_generate(model, ids.to(device), mask.to(device), timings=timings, **kwargs)
            elif engine == "beams":
                out = beam_generate(model, ids.to(device), mask.to(device), timings=timings, **kwargs)
            else:
                out = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), logits_processor=processors, **kwargs
                )
        ends = kwargs["eos_token_id"] if job.family == "causal" else ()  # a seq2seq output starts with its eos
        return decode_new_tokens(tokenizer, out.cpu(), ids.shape[1], job.family, ends)

    return run


@torch.inference_mode()
def generate_summaries(
    model,
    tokenizer,
    rows: Sequence[dict],
    job: Job,
    progress: bool = True,
    keep_tokens: Iterable[str] = (),
    block_foreign: bool | None = None,
    stats: dict | None = None,
) -> list[str]:
    """One summary per prompt row, in the rows' order. ``stats`` (if given) receives timing and counts."""
    if not rows:
        raise GenerationError("no rows to generate for")
    t0 = time.perf_counter()
    budget = input_budget(job, model)
    encoded, n_cut = encode_rows(rows, tokenizer, job.family, budget, template_kwargs(job))
    if n_cut:
        log.warning(
            "%d of %d inputs were longer than %d tokens and were cut (conversation end dropped)",
            n_cut,
            len(rows),
            budget,
        )
    kwargs = generation_kwargs(job, tokenizer, model)
    block = job.generation.block_foreign_scripts if block_foreign is None else block_foreign
    processors = _logits_processors(tokenizer, keep_tokens, block)
    engine = choose_engine(model, job, kwargs, processors)
    timings: dict = {}
    run = _batch_generator(model, tokenizer, job, kwargs, processors, engine, timings)
    if job.generation.do_sample:  # the same rows, batches and seed give the same samples
        torch.manual_seed(job.generation.seed)
    t_gen = time.perf_counter()
    lengths = [len(e) for e in encoded]
    results = map_sorted_batches(
        encoded, lengths, job.generation.batch_size, run, progress=progress, desc=f"generate {job.name}"
    )
    t1 = time.perf_counter()
    if stats is not None:
        stats.update(
            rows=len(rows),
            truncated=n_cut,
            input_budget=budget,
            blocked=bool(block),
            engine=engine,
            seconds=t1 - t0,
            generate_seconds=t1 - t_gen,
            dialogues_per_s=len(rows) / max(t1 - t0, 1e-9),
            **{k.replace("_s", "_seconds"): v for k, v in timings.items()},  # the engine's prefill / decode split
        )
    return results


# --------------------------------------------------------------------------------------------- prompt rows
def read_prompt_rows(path: str | Path, family: str) -> list[dict]:
    """The prompt rows of one split, checked against the model family (chat rows for causal models)."""
    from kdsum.io import read_jsonl

    path = Path(path)
    if not path.exists():
        raise GenerationError(f"prompt file not found: {path}")
    rows = read_jsonl(path)
    if not rows:
        raise GenerationError(f"{path}: the split has no rows; nothing to predict")
    key, kind = ("prompt", "chat") if family == "causal" else ("source", "seq2seq")
    for i, row in enumerate(rows, start=1):
        if key not in row or "fname" not in row:
            other = "seq2seq" if "source" in row else ("chat" if "prompt" in row else "unknown")
            raise GenerationError(
                f"{path}: line {i} is a {other} row (keys {sorted(row)}), but a {family} model "
                f"needs {kind} prompts (key '{key}')"
            )
    fnames = [r["fname"] for r in rows]
    if len(set(fnames)) != len(fnames):
        dup = sorted({f for f in fnames if fnames.count(f) > 1})
        raise GenerationError(f"{path}: duplicated fname(s): {', '.join(dup[:5])}")
    return rows


def predict_rows(
    job: Job,
    rows: Sequence[dict],
    prompts_dir: str | Path,
    model_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    progress: bool = True,
    stats: dict | None = None,
):
    """Load the job's model (kdsum.models.loading.load_for_generation; a QLoRA adapter merged into a 16-bit copy
    where kdsum.gpu.preflight.plan_generation_load says it fits) and summarise ``rows`` of its prompt set:
    (summaries in the rows' order, the loaded model). ``stats`` also receives ``load_path`` (``merged_16bit``,
    ``4bit_unmerged``, ``merged``, ``full``), ``load_reason`` and ``load_seconds``."""
    from functools import partial

    from kdsum.gpu.preflight import plan_generation_load
    from kdsum.models.data_tokens import read_data_tokens
    from kdsum.models.loading import load_for_generation

    t0 = time.perf_counter()
    plan = partial(plan_generation_load, job)
    loaded = load_for_generation(job, model_dir=model_dir, base_dir=base_dir, merge_plan=plan)
    if stats is not None:
        stats.update(load_path=loaded.load_path, load_reason=loaded.load_reason, load_seconds=time.perf_counter() - t0)
    summaries = generate_summaries(
        loaded.model,
        loaded.tokenizer,
        rows,
        job,
        progress=progress,
        keep_tokens=read_data_tokens(Path(prompts_dir)),
        stats=stats,
    )
    return summaries, loaded
