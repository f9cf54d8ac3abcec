"""Prediction: one summary per dialogue from a loaded model (kdsum.modeling.load_for_generation).

Inputs (:func:`encode_rows`)
----------------------------
* chat rows: the prompt messages rendered with the tokenizer's chat template and its assistant generation prompt
  (``add_generation_prompt=True``), then tokenized without adding special tokens again (the template has them:
  Llama-3's template writes ``<|begin_of_text|>`` itself, so a tokenizer call with specials would double it).
  Every render, at training and at prediction, passes the prompt format's chat-template settings
  (:func:`template_kwargs`: ``enable_thinking``, false by default). Qwen3's template renders an empty
  ``<think>\n\n</think>\n\n`` before every answer in a conversation but after a bare generation prompt only with
  ``enable_thinking=False``; with the one setting passed everywhere the trained prompt is the prediction prompt,
  id for id, and with false the think block is part of that prompt, not of what the model learns to write.
* seq2seq rows: the dialogue (``source``), framed ``<s> ... </s>`` and right-truncated by :func:`encode_seq2seq`,
  the function the training stage encodes its sources with.
* Truncation. Causal input budget = ``train.max_length - generation.max_new_tokens`` (the two share the context),
  both capped by the model's position limit (:func:`sequence_limit`); seq2seq encoder budget = ``train.max_length``
  (the decoder's ``max_new_tokens`` does not share the encoder's context). When a chat prompt is too long, the
  *conversation* is cut, never the ``[Question]`` block, the system message or the chat markup
  (:func:`fit_chat_messages`): cutting the end of the whole prompt would drop the instruction and the assistant
  header, and the model would continue the dialogue instead of summarizing it. Within the conversation the
  beginning is kept (whole turns where possible), as the seq2seq path (right truncation, :func:`fit_seq2seq`)
  keeps it: the opening turns set up who is who and what the call is about.
* The same rule at training (kdsum.training): a chat row's prompt is fitted by the same function to the same input
  budget, further lowered when its summary is longer than ``max_new_tokens`` so that prompt + summary fit
  ``train.max_length`` (:func:`fit_chat_example`); the summary is never cut, and a row whose summary alone does not
  fit is dropped. So a row whose summary fits ``max_new_tokens`` trains on exactly the prompt prediction gives it.
  Seq2seq sources are cut by :func:`fit_seq2seq` to the same encoder budget, targets to ``train.max_target_length``.

Generation (:func:`generate_summaries`)
---------------------------------------
Rows are sorted by input length, longest first (an out-of-memory batch fails at the start, not after an hour),
generated in batches of ``generation.batch_size`` with the job's generation settings passed explicitly (greedy
unless ``num_beams > 1``; ``do_sample=False``), and the results are put back in the input order. Causal batches
are padded on the left (:func:`pad_batch`) with the tokenizer's pad token, which is no end id
(kdsum.modeling.choose_pad_token), so that every row's new tokens start at the same position. Generation stops at
the tokenizer's eos, the template's end of turn (:func:`end_of_turn_ids`: ``<|eot_id|>``, ``<|im_end|>``) and the
model's own end ids.
Foreign-script blocking (``generation.block_foreign_scripts``): kdsum.blocking.

Post-processing (:func:`postprocess`)
-------------------------------------
Only the new tokens are decoded (the prompt never reaches the output), up to the first end id, with special tokens
skipped; data tokens such as ``#Person1#`` are ordinary added tokens and survive. A think block the model wrote
(Qwen3's ``<think>`` tags are ordinary added tokens, which ``skip_special_tokens`` keeps) is removed
(:func:`strip_think`), then whitespace runs are collapsed, the text is stripped, and a leading label such as
``요약:`` / ``Summary:`` / ``[요약]`` is removed.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from kdsum.errors import KdsumError
from kdsum.spec import Job

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# The user message of kdsum.prompts.format_user_message: "[Conversation]\n{turns}\n\n[Question]\n{question}".
CONVERSATION_HEADER = "[Conversation]\n"
QUESTION_HEADER = "\n\n[Question]\n"
MIN_INPUT_BUDGET = 16
# A leading label the model may put before the summary: "요약:", "요약 :", "Summary:", "[요약]", "답변:" ...
_LABEL_RE = re.compile(
    r"^\s*(?:\[\s*(?:대화\s*)?요약(?:문)?\s*\]|\[\s*summary\s*\]|"
    r"(?:대화\s*)?(?:요약(?:문)?|summary|답변|답|answer)\s*[:：])\s*",
    re.IGNORECASE,
)
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_THINK_BLOCK_RE = re.compile(r"^\s*<think>.*?</think>", re.DOTALL)


class GenerationError(KdsumError):
    """A prediction job that cannot run (empty split, prompt too long, a tokenizer without eos ...)."""


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


# --------------------------------------------------------------------------------------------- inputs
def _max_positions(model) -> int | None:
    if model is None:
        return None
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def sequence_limit(job: Job, model=None) -> int:
    """How many tokens one sequence may have: ``train.max_length``, capped by the model's position limit (the
    whole prompt + completion of a causal row; the encoder input of a seq2seq row)."""
    max_length, max_pos = job.train.max_length, _max_positions(model)
    return min(max_length, max_pos) if max_pos else max_length


def target_limit(job: Job, model=None) -> int:
    """How many tokens a seq2seq target may have: ``train.max_target_length``, capped by the position limit."""
    max_pos = _max_positions(model)
    return min(job.train.max_target_length, max_pos) if max_pos else job.train.max_target_length


def input_budget(job: Job, model=None) -> int:
    """How many input tokens a row may have: see the module docstring (Truncation)."""
    max_length, new_tokens = job.train.max_length, job.generation.max_new_tokens
    max_pos = _max_positions(model)
    total = sequence_limit(job, model)
    budget = total - new_tokens if job.family == "causal" else total
    if budget < MIN_INPUT_BUDGET:
        raise GenerationError(
            f"model '{job.model}': input budget of {budget} tokens (train.max_length={max_length}, "
            f"generation.max_new_tokens={new_tokens}, model positions={max_pos}) is too small to hold a prompt"
        )
    return budget


def encode_seq2seq(tokenizer, text: str, max_length: int) -> list[int]:
    """``<s> text </s>`` truncated to ``max_length`` ids, as the offline pretraining framed every sequence.

    Tokenizers that add the frame themselves (a post-processor) are left to do so. Training encodes its sources
    and targets with this function, prediction its inputs."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if eos is not None and ids[-1] == eos:
        ids = ids[:-1]
    ids = ids[: max(1, max_length - 1)]
    return ids + ([eos] if eos is not None else [])


def fit_seq2seq(tokenizer, text: str, budget: int) -> tuple[list[int], bool]:
    """:func:`encode_seq2seq` of ``text`` cut to ``budget`` ids (its beginning kept); and whether it was cut. The
    one rule for seq2seq sources (training and prediction) and targets (training)."""
    ids = encode_seq2seq(tokenizer, text, sys.maxsize)
    if len(ids) <= budget:
        return ids, False
    return encode_seq2seq(tokenizer, text, budget), True


def template_kwargs(job_or_format) -> dict:
    """The chat-template settings of a prompt format (a kdsum.spec.PromptFormat, a Job, or None): the one set of
    keyword arguments every render passes, at training and at prediction alike. ``enable_thinking`` is Qwen3's think
    switch; templates that do not read it ignore it."""
    fmt = getattr(job_or_format, "prompt", job_or_format)
    return {"enable_thinking": bool(getattr(fmt, "enable_thinking", False))}


def chat_prompt_text(tokenizer, messages: list[dict], kwargs: dict | None = None) -> str:
    """The prompt messages in the tokenizer's chat template, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **(kwargs or {}))


def chat_text(tokenizer, messages: list[dict], kwargs: dict | None = None) -> str:
    """A whole conversation (prompt + assistant completion) in the chat template, as training sees it."""
    return tokenizer.apply_chat_template(messages, tokenize=False, **(kwargs or {}))


def end_of_turn_ids(tokenizer, kwargs: dict | None = None) -> list[int]:
    """The ids that end an assistant turn: the tokenizer's eos and the chat template's own end of turn (Llama-3's
    ``<|eot_id|>``, ChatML's ``<|im_end|>``: the last special token the template puts after an answer)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": "x"}]
        try:
            prompt = chat_prompt_text(tokenizer, probe, kwargs)
            full = chat_text(tokenizer, [*probe, {"role": "assistant", "content": "y"}], kwargs)
        except Exception:  # a template that needs more than a user turn: eos alone
            full = prompt = ""
        if full.startswith(prompt):
            special = set(tokenizer.all_special_ids)
            tail = [i for i in _ids(tokenizer, full[len(prompt) :]) if i in special]
            if tail and tail[-1] not in ids:
                ids.append(tail[-1])
    return ids


def split_user_message(content: str) -> tuple[str, str, str] | None:
    """``(head, conversation, tail)`` of a user message in the kdsum prompt layout, or None for another layout."""
    if not content.startswith(CONVERSATION_HEADER):
        return None
    q = content.rfind(QUESTION_HEADER)
    if q < len(CONVERSATION_HEADER):
        return None
    return CONVERSATION_HEADER, content[len(CONVERSATION_HEADER) : q], content[q:]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _with_conversation(messages: list[dict], user_i: int, parts: tuple[str, str, str], conversation: str) -> list[dict]:
    head, _, tail = parts
    msgs = [dict(m) for m in messages]
    msgs[user_i]["content"] = head + conversation + tail
    return msgs


def _longest_fitting_prefix(fits: Callable[[int], bool], n: int) -> int:
    """The largest ``k`` in [0, n) with ``fits(k)``, given ``fits(0)`` and not ``fits(n)`` (monotone)."""
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fit_chat_messages(
    tokenizer, messages: list[dict], budget: int, ids: list[int] | None = None, kwargs: dict | None = None
) -> tuple[list[dict], list[int], bool]:
    """The one rule that fits a chat prompt to ``budget`` tokens, at prediction and at training: the prompt messages
    with the conversation cut so that the rendered prompt fits, its token ids, and whether it was cut.

    The cut keeps the beginning of the conversation and ends at a turn boundary when the kept part has one; the
    system message, the ``[Question]`` block and the chat markup stay whole. ``ids``: the prompt's ids when the
    caller has them already; ``kwargs``: the chat-template settings (:func:`template_kwargs`). Raises
    GenerationError when even an empty conversation does not fit.
    """
    if ids is None:
        ids = _ids(tokenizer, chat_prompt_text(tokenizer, messages, kwargs))
    if len(ids) <= budget:
        return messages, ids, False
    user_i = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    parts = split_user_message(messages[user_i]["content"]) if user_i is not None else None
    if parts is None:
        raise GenerationError(
            f"prompt of {len(ids)} tokens exceeds the input budget of {budget} and its user message is not in "
            f"the '[Conversation] ... [Question]' layout, so the conversation cannot be cut safely"
        )
    conv = parts[1]

    def fits(n_chars: int) -> bool:
        text = chat_prompt_text(tokenizer, _with_conversation(messages, user_i, parts, conv[:n_chars]), kwargs)
        return len(_ids(tokenizer, text)) <= budget

    if budget < 1 or not fits(0):
        raise GenerationError(
            f"the prompt without any conversation needs more than the input budget of {budget} tokens; "
            f"raise train.max_length or lower generation.max_new_tokens"
        )
    cut = conv[: _longest_fitting_prefix(fits, len(conv))]
    nl = cut.rfind("\n")
    if nl > 0:  # end at a turn boundary
        cut = cut[:nl]
    msgs = _with_conversation(messages, user_i, parts, cut.rstrip())
    return msgs, _ids(tokenizer, chat_prompt_text(tokenizer, msgs, kwargs)), True


def fit_chat_prompt(tokenizer, messages: list[dict], budget: int, kwargs: dict | None = None) -> tuple[list[int], bool]:
    """Token ids of the chat prompt, the conversation cut so that it fits ``budget`` (:func:`fit_chat_messages`);
    and whether it was cut."""
    _, ids, cut = fit_chat_messages(tokenizer, messages, budget, kwargs=kwargs)
    return ids, cut


def completion_ids(
    tokenizer,
    prompt: list[dict],
    completion: list[dict],
    kwargs: dict | None = None,
    prompt_ids: list[int] | None = None,
) -> list[int]:
    """The ids the template puts after the rendered prompt when the completion is added: e.g. Llama-3's
    ``{summary}<|eot_id|>``, Qwen3's ``<think>\n\n</think>\n\n{summary}<|im_end|>\n`` (``{summary}<|im_end|>\n``
    when ``enable_thinking`` is false: the empty think block is then in the prompt), with what the template renders
    after the end of turn (ChatML's newline), as TRL renders a conversational completion.

    The whole conversation is tokenized, and the prompt's ids (``prompt_ids`` when the caller has them) must be its
    exact beginning; where tokens merge across the boundary, the completion's text is tokenized on its own
    instead, so the trained prompt stays exactly the one prediction gives. Ended with eos when the template puts
    no end of turn (:func:`end_of_turn_ids`) after the answer, so that the model learns to stop. Raises
    GenerationError when the template renders the prompt alone otherwise than as the conversation's beginning."""
    prompt_text = chat_prompt_text(tokenizer, prompt, kwargs)
    full = chat_text(tokenizer, prompt + completion, kwargs)
    if not full.startswith(prompt_text):
        raise GenerationError(
            "the chat template renders the prompt with its generation prompt otherwise than as the beginning of "
            f"the whole conversation (prompt ends {prompt_text[-40:]!r}, conversation continues "
            f"{full[max(0, len(prompt_text) - 40) : len(prompt_text) + 20]!r}): check "
            "prompt.formats.<f>.enable_thinking"
        )
    prompt_ids = _ids(tokenizer, prompt_text) if prompt_ids is None else prompt_ids
    full_ids = _ids(tokenizer, full)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids) :]
    else:  # a merge across the boundary: the completion on its own, the prompt kept as prediction renders it
        ids = _ids(tokenizer, full[len(prompt_text) :])
    if any(t in ids for t in end_of_turn_ids(tokenizer, kwargs)) or tokenizer.eos_token_id is None:
        return ids
    return ids + [tokenizer.eos_token_id]


def fit_chat_example(
    tokenizer, prompt: list[dict], completion: list[dict], total: int, budget: int, kwargs: dict | None = None
) -> tuple[list[int], int, bool]:
    """A training row: ``(ids, n_prompt, cut)``, the ids of prompt + completion in the chat template, of which the
    first ``n_prompt`` are the prompt (masked from the loss) and the rest the whole completion (summary and
    end-of-turn markup, never cut); ``cut``: whether the conversation was cut. ``kwargs``: the chat-template
    settings (:func:`template_kwargs`), the same prediction renders with.

    The prompt part is exactly the ids prediction gives the model for this row (:func:`fit_chat_messages`, to
    ``budget``, prediction's input budget), lowered to ``total - completion tokens`` when the completion is longer
    than prediction leaves room for, so that ``len(ids) <= total``; the completion part is
    :func:`completion_ids`. Raises GenerationError when the completion alone (with an empty conversation) does not
    fit ``total``.
    """
    completion = list(completion)
    prompt_ids = _ids(tokenizer, chat_prompt_text(tokenizer, prompt, kwargs))
    tail = completion_ids(tokenizer, prompt, completion, kwargs, prompt_ids)
    limit, cut, messages = min(budget, total - len(tail)), False, prompt
    for _ in range(3):  # the completion's tokens hardly depend on the prompt's cut; if they do, fit again
        if limit < 1:
            break
        messages, ids, cut = fit_chat_messages(tokenizer, prompt, limit, ids=prompt_ids, kwargs=kwargs)
        if cut:
            tail = completion_ids(tokenizer, messages, completion, kwargs, ids)
        if len(ids) + len(tail) <= total:
            return ids + tail, len(ids), cut
        limit -= len(ids) + len(tail) - total
    raise GenerationError(
        f"the completion of {len(tail)} tokens does not fit a sequence of {total} tokens with any conversation"
    )


def encode_rows(
    rows: Sequence[dict], tokenizer, family: str, budget: int, kwargs: dict | None = None
) -> tuple[list[list[int]], int]:
    """Input ids of every prompt row (chat rows for causal, rendered with the chat-template settings ``kwargs``;
    seq2seq rows for seq2seq); and how many were cut."""
    encoded, n_cut = [], 0
    for row in rows:
        if family == "causal":
            ids, cut = fit_chat_prompt(tokenizer, row["prompt"], budget, kwargs)
        else:
            # framed <s> ... </s> and right-truncated exactly as the training stage encodes its sources
            ids, cut = fit_seq2seq(tokenizer, row["source"], budget)
        encoded.append(ids)
        n_cut += bool(cut)
    return encoded, n_cut


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of ``seqs`` padded with ``pad_id`` on ``side`` ('left' for decoder-only
    generation). The one padding helper: generation batches, and the offline pretraining (labels with -100)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        span = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, span] = torch.tensor(list(s))
        mask[i, span] = 1
    return ids, mask


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
    """The ids that stop generation: the tokenizer's eos, the template's end of turn (:func:`end_of_turn_ids`) and
    the model's own end ids (e.g. Llama-3.2's three)."""
    ids: list[int] = []
    turn_ends = end_of_turn_ids(tokenizer, kwargs) if kwargs is not None else []
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
    the tokenizer has a pad token: kdsum.modeling.load_tokenizer)."""
    g = job.generation
    eos = _eos_ids(tokenizer, model, template_kwargs(job) if job.family == "causal" else None)
    return dict(
        do_sample=False,
        num_beams=g.num_beams,
        max_new_tokens=g.max_new_tokens,
        no_repeat_ngram_size=g.no_repeat_ngram_size,
        repetition_penalty=g.repetition_penalty,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0],
        # sampling knobs of a hub generation_config are meaningless under greedy/beam search
        temperature=None,
        top_p=None,
        top_k=None,
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

    from kdsum.blocking import BlockTokensProcessor, foreign_token_mask

    return LogitsProcessorList([BlockTokensProcessor(foreign_token_mask(tokenizer, keep_tokens))])


def _batch_generator(model, tokenizer, job: Job, kwargs: dict, processors) -> Callable[[list[list[int]]], list[str]]:
    """The function that generates one batch of encoded inputs (padded on the family's side) and decodes it."""
    side = "left" if job.family == "causal" else "right"
    device = _model_device(model)
    model.eval()

    def run(batch: list[list[int]]) -> list[str]:
        ids, mask = pad_batch(batch, kwargs["pad_token_id"], side)
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
    run = _batch_generator(model, tokenizer, job, kwargs, processors)
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
            seconds=t1 - t0,
            generate_seconds=t1 - t_gen,
            dialogues_per_s=len(rows) / max(t1 - t0, 1e-9),
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
