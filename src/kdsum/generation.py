"""Prediction: load a trained (or zero-shot) model and generate one summary per dialogue.

Loading (:func:`load_for_generation`)
-------------------------------------
* causal, fine-tuned: ``results/train/M/V/model`` is a PEFT LoRA adapter. The base comes from ``--base`` or else
  from the adapter's ``adapter_config.json`` (``base_model_name_or_path``); the adapter is applied with
  ``PeftModel.from_pretrained`` and merged (``merge_and_unload``) unless the base is 4-bit (QLoRA on CUDA), where
  merging would dequantize and the adapter stays separate. When the training stage added data tokens to the
  tokenizer, the base is first grown exactly as training grew it (``kdsum.training.resize_for_new_tokens``). A
  model directory without an adapter config is loaded as a full model.
* seq2seq, fine-tuned: the model directory is a full model.
* zero-shot (variant ``zeroshot``): the base model alone (the built base directory, or the configured source).
* The tokenizer comes from the model directory when it has one (the trainer saves it there), else from the base.

Inputs (:func:`encode_rows`)
----------------------------
* chat rows: the prompt messages rendered with the tokenizer's chat template and its assistant generation prompt
  (``add_generation_prompt=True``), then tokenized without adding special tokens again (the template has them).
* seq2seq rows: the dialogue (``source``), framed ``<s> ... </s>`` and right-truncated by
  ``kdsum.training.encode_seq2seq``, the function the training stage encodes its sources with.
* Truncation. Causal input budget = ``train.max_length - generation.max_new_tokens`` (the two share the context),
  capped by the model's position limit; seq2seq encoder budget = ``train.max_length`` (the decoder's
  ``max_new_tokens`` does not share the encoder's context). When a chat prompt is too long, the *conversation* is
  cut, never the ``[Question]`` block, the system message or the chat markup: cutting the end of the whole prompt
  would drop the instruction and the assistant header, and the model would continue the dialogue instead of
  summarizing it. Within the conversation the beginning is kept (whole turns where possible), as the seq2seq
  path (right truncation) keeps it: the opening turns set up who is who and what the call is about.

Generation (:func:`generate_summaries`)
---------------------------------------
Rows are sorted by input length, longest first (an out-of-memory batch fails at the start, not after an hour),
generated in batches of ``generation.batch_size`` with the settings of ``spec["generation"]`` passed explicitly
(greedy unless ``num_beams > 1``; ``do_sample=False``), and the results are put back in the input order. Causal
batches are padded on the left so that every row's new tokens start at the same position.

Post-processing (:func:`postprocess`)
-------------------------------------
Only the new tokens are decoded (the prompt never reaches the output), with special tokens skipped; data tokens
such as ``#Person1#`` are ordinary added tokens and survive. Then whitespace runs are collapsed, the text is
stripped, and a leading label such as ``요약:`` / ``Summary:`` / ``[요약]`` is removed.

Foreign-script blocking (:func:`foreign_token_mask`, :class:`BlockTokensProcessor`)
-----------------------------------------------------------------------------------
With ``generation.block_foreign_scripts`` every vocabulary entry whose decoded text contains Latin letters
(incl. full-width), Han characters, Japanese kana, emoji or URL pieces is suppressed, the same classes that
``kdsum.metrics.has_foreign_script`` counts as foreign. Exempt: special tokens (the end-of-turn token must stay
reachable), data tokens (``#Person1#``, ``#PhoneNumber#``; text matching ``#[A-Za-z]+\\d*#``), and, when a
tokenizer splits a data token into pieces, those pieces. The mask is computed once per tokenizer and applied as a
precomputed additive bias (0 / -inf): on a 152k vocabulary at batch 16 that costs about 1.5 ms per step on CPU,
against about 45 ms for ``masked_fill`` with the boolean mask and about 400 ms for ``suppress_tokens`` (which
rebuilds an ``isin`` mask over the vocabulary at every step), measured with 2 threads on a shared CPU.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import torch

from kdsum.metrics import FOREIGN_CHAR_PATTERN

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "GenerationError",
    "LoadedModel",
    "BlockTokensProcessor",
    "input_budget",
    "length_sorted_order",
    "map_sorted_batches",
    "chat_prompt_text",
    "split_user_message",
    "fit_chat_prompt",
    "encode_rows",
    "pad_batch",
    "foreign_token_mask",
    "has_foreign_text",
    "generation_kwargs",
    "postprocess",
    "decode_new_tokens",
    "generate_summaries",
    "load_for_generation",
    "read_prompt_rows",
]

# The user message of kdsum.prompts.format_user_message: "[Conversation]\n{turns}\n\n[Question]\n{question}".
CONVERSATION_HEADER = "[Conversation]\n"
QUESTION_HEADER = "\n\n[Question]\n"

DATA_TOKEN_PATTERN = r"#[A-Za-z]+\d*#"
_DATA_TOKEN_RE = re.compile(DATA_TOKEN_PATTERN)
# Latin (ASCII + full-width), Han, kana, emoji and URL pieces: the classes kdsum.metrics counts as foreign.
# Latin-1 / extended Latin letters (é, ß) are included too: a Korean summary has no use for them.
# Token pieces are matched, so URL fragments ("://", "https") count on their own here.
_FOREIGN_RE = re.compile(r"://|https?|www\.|[\u00c0-\u024f]|" + FOREIGN_CHAR_PATTERN)
# A leading label the model may put before the summary: "요약:", "요약 :", "Summary:", "[요약]", "답변:" ...
_LABEL_RE = re.compile(
    r"^\s*(?:\[\s*(?:대화\s*)?요약(?:문)?\s*\]|\[\s*summary\s*\]|"
    r"(?:대화\s*)?(?:요약(?:문)?|summary|답변|답|answer)\s*[:：])\s*",
    re.IGNORECASE,
)


class GenerationError(RuntimeError):
    """A prediction job that cannot run (missing model directory, empty split, prompt too long ...)."""


# --------------------------------------------------------------------------------------------- ordering
def length_sorted_order(lengths: Sequence[int]) -> list[int]:
    """Indices of ``lengths`` longest first; ties keep the input order (stable)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def map_sorted_batches(items: Sequence[T], lengths: Sequence[int], batch_size: int,
                       fn: Callable[[list[T]], list[R]], progress: bool = False, desc: str = "generate") -> list[R]:
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
        idx = order[start:start + batch_size]
        out = fn([items[i] for i in idx])
        if len(out) != len(idx):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(idx)} items")
        for i, r in zip(idx, out):
            results[i] = r
    return results


# --------------------------------------------------------------------------------------------- inputs
def _max_positions(model) -> int | None:
    if model is None:
        return None
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def input_budget(spec: dict, model=None) -> int:
    """How many input tokens a row may have: see the module docstring (Truncation)."""
    max_length = int(spec["train"]["max_length"])
    max_pos = _max_positions(model)
    if spec["family"] == "causal":
        total = min(max_length, max_pos) if max_pos else max_length
        budget = total - int(spec["generation"]["max_new_tokens"])
    else:
        budget = min(max_length, max_pos) if max_pos else max_length
    if budget < 16:
        raise GenerationError(
            f"model '{spec['name']}': input budget of {budget} tokens (train.max_length={max_length}, "
            f"generation.max_new_tokens={spec['generation']['max_new_tokens']}, model positions={max_pos}) "
            f"is too small to hold a prompt")
    return budget


def chat_prompt_text(tokenizer, messages: list[dict]) -> str:
    """The prompt messages in the tokenizer's chat template, ending with the assistant generation prompt."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def split_user_message(content: str) -> tuple[str, str, str] | None:
    """``(head, conversation, tail)`` of a user message in the kdsum prompt layout, or None for another layout."""
    if not content.startswith(CONVERSATION_HEADER):
        return None
    q = content.rfind(QUESTION_HEADER)
    if q < len(CONVERSATION_HEADER):
        return None
    return CONVERSATION_HEADER, content[len(CONVERSATION_HEADER):q], content[q:]


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_chat_prompt(tokenizer, messages: list[dict], budget: int) -> tuple[list[int], bool]:
    """Token ids of the chat prompt, the conversation cut so that it fits ``budget``; and whether it was cut.

    The cut keeps the beginning of the conversation and ends at a turn boundary when the kept part has one.
    Raises GenerationError when even an empty conversation does not fit.
    """
    text = chat_prompt_text(tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return ids, False
    user_i = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    parts = split_user_message(messages[user_i]["content"]) if user_i is not None else None
    if parts is None:
        raise GenerationError(
            f"prompt of {len(ids)} tokens exceeds the input budget of {budget} and its user message is not in "
            f"the '[Conversation] ... [Question]' layout, so the conversation cannot be cut safely")
    head, conv, tail = parts

    def render(n_chars: int) -> str:
        kept = conv[:n_chars]
        msgs = [dict(m) for m in messages]
        msgs[user_i]["content"] = head + kept + tail
        return chat_prompt_text(tokenizer, msgs)

    if _count(tokenizer, render(0)) > budget:
        raise GenerationError(
            f"the prompt without any conversation needs more than the input budget of {budget} tokens; "
            f"raise train.max_length or lower generation.max_new_tokens")
    lo, hi = 0, len(conv)  # invariant: render(lo) fits, render(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count(tokenizer, render(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    cut = conv[:lo]
    nl = cut.rfind("\n")
    if nl > 0:  # end at a turn boundary
        cut = cut[:nl]
    cut = cut.rstrip()
    msgs = [dict(m) for m in messages]
    msgs[user_i]["content"] = head + cut + tail
    return tokenizer(chat_prompt_text(tokenizer, msgs), add_special_tokens=False)["input_ids"], True


def encode_rows(rows: Sequence[dict], tokenizer, family: str, budget: int) -> tuple[list[list[int]], int]:
    """Input ids of every prompt row (chat rows for causal, seq2seq rows for seq2seq); and how many were cut."""
    from kdsum.training import encode_seq2seq

    encoded, n_cut = [], 0
    for row in rows:
        if family == "causal":
            ids, cut = fit_chat_prompt(tokenizer, row["prompt"], budget)
        else:
            # framed <s> ... </s> and right-truncated exactly as the training stage encodes its sources
            ids = encode_seq2seq(tokenizer, row["source"], sys.maxsize)
            cut = len(ids) > budget
            if cut:
                ids = encode_seq2seq(tokenizer, row["source"], budget)
        encoded.append(ids)
        n_cut += bool(cut)
    return encoded, n_cut


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, padded on ``side`` ('left' for decoder-only generation)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "left":
            ids[i, width - len(s):] = torch.tensor(list(s))
            mask[i, width - len(s):] = 1
        else:
            ids[i, :len(s)] = torch.tensor(list(s))
            mask[i, :len(s)] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------- blocking
def has_foreign_text(text: str) -> bool:
    """True if ``text`` (data tokens removed) has Latin, Han, kana, emoji or a URL piece."""
    return _FOREIGN_RE.search(_DATA_TOKEN_RE.sub(" ", text)) is not None


def foreign_token_mask(tokenizer, keep_tokens: Iterable[str] = ()) -> torch.Tensor:
    """Boolean mask over the tokenizer's ids (``len(tokenizer)``): True = suppress. Cached on the tokenizer.

    ``keep_tokens``: data tokens (``#Person1#`` ...) whose ids, or pieces if the tokenizer splits them, stay allowed.
    """
    key = (len(tokenizer), tuple(sorted(set(keep_tokens))))
    cache = tokenizer.__dict__.setdefault("_kdsum_foreign_masks", {})
    if key in cache:
        return cache[key]
    n = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
    mask = torch.tensor([has_foreign_text(t) for t in texts], dtype=torch.bool)
    allowed = set(tokenizer.all_special_ids)
    allowed.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special and i < n)
    for t in key[1]:
        allowed.update(tokenizer(t, add_special_tokens=False)["input_ids"])
    allowed = [i for i in allowed if 0 <= i < n]
    if allowed:
        mask[torch.tensor(allowed)] = False
    cache[key] = mask
    return mask


try:  # transformers' base class, so generate() accepts the processor in its LogitsProcessorList
    from transformers import LogitsProcessor as _LogitsProcessorBase
except ImportError:  # pragma: no cover
    _LogitsProcessorBase = object


class BlockTokensProcessor(_LogitsProcessorBase):
    """Suppress the masked ids by adding a precomputed bias (0 or -inf) to the scores.

    Ids beyond the mask (embedding rows padded past the tokenizer, as in Qwen) are blocked too. An additive bias
    is the cheapest form measured on CPU (see the module docstring): about 10-30x faster per step than
    ``masked_fill`` with a broadcast boolean mask and about 60-300x faster than ``suppress_tokens``.
    """

    def __init__(self, mask: torch.Tensor):
        self.mask = mask
        self._bias: dict[tuple, torch.Tensor] = {}

    def bias_for(self, scores: torch.Tensor) -> torch.Tensor:
        key = (scores.shape[-1], scores.dtype, scores.device)
        bias = self._bias.get(key)
        if bias is None:
            v = scores.shape[-1]
            m = torch.ones(v, dtype=torch.bool)
            k = min(v, self.mask.shape[0])
            m[:k] = self.mask[:k]
            bias = torch.zeros(v, dtype=scores.dtype).masked_fill(m, float("-inf")).to(scores.device)
            self._bias[key] = bias
        return bias

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores + self.bias_for(scores)


# --------------------------------------------------------------------------------------------- outputs
def postprocess(text: str) -> str:
    """Collapse whitespace runs, strip, and remove a leading label such as ``요약:``."""
    text = " ".join(text.split())
    for _ in range(2):  # "요약: 요약: ..." happens
        new = _LABEL_RE.sub("", text, count=1)
        if new == text:
            break
        text = new
    return text.strip()


def decode_new_tokens(tokenizer, sequences: torch.Tensor, prompt_width: int, family: str) -> list[str]:
    """Decode only what the model generated: for causal models everything after the (left-padded) prompt."""
    new = sequences[:, prompt_width:] if family == "causal" else sequences
    texts = tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [postprocess(t) for t in texts]


def _eos_ids(tokenizer, model) -> list[int]:
    ids: list[int] = []
    for cand in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        for i in (cand if isinstance(cand, (list, tuple)) else [cand]):
            if i is not None and i not in ids:
                ids.append(int(i))
    if not ids:
        raise GenerationError("the tokenizer has no eos token: generation would never stop before max_new_tokens")
    return ids


def generation_kwargs(spec: dict, tokenizer, model) -> dict:
    """The generate() settings, all explicit: from ``spec['generation']``, eos from the tokenizer (plus the
    model's own end ids, e.g. Qwen's two), pad id set."""
    g = spec["generation"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_ids(tokenizer, model)[0]
    return dict(
        do_sample=False,
        num_beams=int(g["num_beams"]),
        max_new_tokens=int(g["max_new_tokens"]),
        no_repeat_ngram_size=int(g["no_repeat_ngram_size"]),
        repetition_penalty=float(g["repetition_penalty"]),
        eos_token_id=_eos_ids(tokenizer, model),
        pad_token_id=pad,
        # sampling knobs of a hub generation_config are meaningless under greedy/beam search
        temperature=None, top_p=None, top_k=None,
    )


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


@torch.inference_mode()
def generate_summaries(model, tokenizer, rows: Sequence[dict], spec: dict, progress: bool = True,
                       keep_tokens: Iterable[str] = (), block_foreign: bool | None = None,
                       stats: dict | None = None) -> list[str]:
    """One summary per prompt row, in the rows' order. ``stats`` (if given) receives timing and counts."""
    family = spec["family"]
    if not rows:
        raise GenerationError("no rows to generate for")
    t0 = time.perf_counter()
    budget = input_budget(spec, model)
    encoded, n_cut = encode_rows(rows, tokenizer, family, budget)
    if n_cut:
        log.warning("%d of %d inputs were longer than %d tokens and were cut (conversation end dropped)",
                    n_cut, len(rows), budget)
    kwargs = generation_kwargs(spec, tokenizer, model)
    block = spec["generation"].get("block_foreign_scripts", False) if block_foreign is None else block_foreign
    processors = None
    if block:
        from transformers import LogitsProcessorList

        processors = LogitsProcessorList([BlockTokensProcessor(foreign_token_mask(tokenizer, keep_tokens))])
    side = "left" if family == "causal" else "right"
    device = _model_device(model)
    model.eval()

    def run(batch: list[list[int]]) -> list[str]:
        ids, mask = pad_batch(batch, kwargs["pad_token_id"], side)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             logits_processor=processors, **kwargs)
        return decode_new_tokens(tokenizer, out.cpu(), ids.shape[1], family)

    t_gen = time.perf_counter()
    results = map_sorted_batches(encoded, [len(e) for e in encoded], int(spec["generation"]["batch_size"]), run,
                                 progress=progress, desc=f"generate {spec['name']}")
    t1 = time.perf_counter()
    if stats is not None:
        stats.update(rows=len(rows), truncated=n_cut, input_budget=budget, blocked=bool(block),
                     seconds=t1 - t0, generate_seconds=t1 - t_gen,
                     dialogues_per_s=len(rows) / max(t1 - t0, 1e-9))
    return results


# --------------------------------------------------------------------------------------------- loading
class LoadedModel:
    """A model ready for generation, with where it came from."""

    def __init__(self, model, tokenizer, base: str, adapter: str | None, merged: bool, notes: list[str]):
        self.model, self.tokenizer = model, tokenizer
        self.base, self.adapter, self.merged, self.notes = base, adapter, merged, notes


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()


def load_for_generation(spec: dict, model_dir: str | Path | None = None, base: str | Path | None = None,
                        device: str | None = None) -> LoadedModel:
    """Load what a prediction job generates with; see the module docstring (Loading)."""
    from kdsum.config import ZERO_SHOT
    from kdsum.modeling import ModelLoadError, effective_method, load_model, load_tokenizer, model_source

    name, family = spec["name"], spec["family"]
    method, notes = effective_method(spec)
    for n in notes:
        log.warning(n)
    adapter = None
    if spec["variant"] == ZERO_SHOT:
        if model_dir is not None:
            raise GenerationError(f"variant '{ZERO_SHOT}' generates with the base model alone: give --base, "
                                  f"not --model-dir")
        if spec.get("build") and base is None:
            raise GenerationError(f"model '{name}' is built offline: a zero-shot run needs --base (the built base "
                                  f"directory, results/base/{name})")
        source = model_source(spec, base)
        tokenizer_src = source
    else:
        if model_dir is None:
            raise GenerationError(f"model '{name}' variant '{spec['variant']}': --model-dir is required "
                                  f"(the trained model, results/train/{name}/{spec['variant']}/model)")
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise GenerationError(f"model directory not found: {model_dir} (train model '{name}' variant "
                                  f"'{spec['variant']}' first)")
        if (model_dir / "adapter_config.json").exists():
            adapter = str(model_dir)
            if base is not None:
                source = str(base)
            else:
                cfg = json.loads((model_dir / "adapter_config.json").read_text(encoding="utf-8"))
                source = cfg.get("base_model_name_or_path")
                if not source:
                    raise GenerationError(f"{model_dir}/adapter_config.json names no base model "
                                          f"(base_model_name_or_path); pass --base")
        elif (model_dir / "config.json").exists():
            source = str(model_dir)
        else:
            raise GenerationError(f"{model_dir} holds neither a LoRA adapter (adapter_config.json) nor a model "
                                  f"(config.json)")
        tokenizer_src = str(model_dir) if _has_tokenizer(model_dir) else source
    if family == "seq2seq" and adapter is not None:
        raise GenerationError(f"model '{name}' is seq2seq (fully fine-tuned) but {model_dir} is a LoRA adapter")

    tokenizer = load_tokenizer(tokenizer_src, name, family)
    load_method = "qlora" if method == "qlora" else "full"
    try:
        model = load_model(spec, source, method=load_method, for_training=False)
    except ModelLoadError as exc:
        if adapter is not None and base is None:
            raise ModelLoadError(f"{exc} (the base named by {adapter}/adapter_config.json; pass --base to "
                                 f"override)") from exc
        raise
    merged = False
    if adapter is not None:
        from peft import PeftModel

        from kdsum.training import resize_for_new_tokens

        emb = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > emb:  # data tokens added at training time: grow the base exactly as training did
            resize_for_new_tokens(model, tokenizer, list(range(emb, len(tokenizer))))
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"model '{name}': cannot load the adapter in {adapter} on base {source}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        if load_method != "qlora":
            model = model.merge_and_unload()
            merged = True
    if load_method != "qlora":
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(dev)
    model.eval()
    return LoadedModel(model, tokenizer, source, adapter, merged, notes)


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
            raise GenerationError(f"{path}: line {i} is a {other} row (keys {sorted(row)}), but a {family} model "
                                  f"needs {kind} prompts (key '{key}')")
    fnames = [r["fname"] for r in rows]
    if len(set(fnames)) != len(fnames):
        dup = sorted({f for f in fnames if fnames.count(f) > 1})
        raise GenerationError(f"{path}: duplicated fname(s): {', '.join(dup[:5])}")
    return rows
