"""Loading any model the same way, from a hub id or a local path; the one loader of a model to generate with.

* :func:`load_tokenizer`, :func:`load_base_model`: what training and prediction both load a base with (dtype from
  :func:`use_bf16`, the one bf16 decision; 4-bit NF4 through :func:`quantization_config` for QLoRA). A chat
  tokenizer gets a pad token that is none of its end ids (:func:`choose_pad_token`).
* :func:`load_for_generation`: a trained or zero-shot model ready for ``generate``, used by the predict stage and
  the tests:

  - zero-shot (variant ``zeroshot``): the base alone, ``--base-dir`` (a built model) or ``job.source``; grown to
    the tokenizer when :func:`choose_pad_token` had to add a pad token.
  - causal, fine-tuned: the model directory is a PEFT LoRA adapter. The base is ``--base-dir``, else
    ``job.source``, else the adapter's ``adapter_config.json`` (``base_model_name_or_path``). When training added
    data tokens to the tokenizer, the base is first grown exactly as training grew it
    (:func:`kdsum.models.data_tokens.grow_to_tokenizer`); the adapter is applied with ``PeftModel.from_pretrained`` and
    merged (``merge_and_unload``). A QLoRA base (4-bit on CUDA) is merged only where the caller's ``merge_plan``
    (kdsum.gpu.preflight.plan_generation_load, passed by kdsum.generation.predict) says a 16-bit copy fits: the
    4-bit base is dequantized (:func:`dequantize_base`: its linears become 16-bit ones holding exactly the weights
    the 4-bit forward multiplies with) and the adapter merged into it, so the fast engine serves it; otherwise it
    stays a 4-bit base with an unmerged adapter, the plan's reason kept in :attr:`LoadedModel.load_reason`.
  - seq2seq, fine-tuned: the model directory is a full model.
  - The tokenizer comes from the model directory when it has one (the trainer saves it there), else the base.

Offline models (a tokenizer trained on the dialogues, a small BART or Llama) are built by kdsum.models.build and
are ordinary Hugging Face directories, loaded by this same code.

A source that names a local path (it exists, or it is written as a path: absolute, ``./``, ``~``) must be a model
directory: :func:`check_local_source` refuses, in one line naming the setting it came from
(``models.<name>.source``, ``--base-dir``, ``--model-dir``), a path that is missing, a file, or a directory without
``config.json`` or without a tokenizer, before anything is hashed, downloaded, loaded or deleted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdsum.config.spec import ZERO_SHOT, Job, QuantizationArgs
from kdsum.errors import KdsumError
from kdsum.io import read_json

log = logging.getLogger(__name__)

# ChatML, as Qwen uses; the {% generation %} markers let TRL's assistant_only_loss work as well.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelLoadError(KdsumError):
    """A model source that cannot be loaded; the message names the model key and the source."""


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass


# --------------------------------------------------------------------------------------------- settings
def base_source(job: Job, base_dir: str | Path | None = None) -> str | None:
    """Where a job's base weights come from: ``base_dir`` (a model built offline, results/base/M) when given,
    else the configured hub id or local path (None for a built model without ``base_dir``)."""
    return str(base_dir) if base_dir is not None else job.source


def require_base(job: Job, base_dir: str | Path | None, what: str) -> str:
    """:func:`base_source`, refusing a built model without its base directory."""
    source = base_source(job, base_dir)
    if source is None:
        raise ModelLoadError(
            f"model '{job.model}' is built offline: {what} needs --base-dir (the built base directory, "
            f"results/base/{job.model})"
        )
    return source


def use_bf16(job: Job) -> bool:
    """``train.bf16``: true/false, or ``auto`` = where the hardware has it (CUDA with bf16 support). The one
    decision: the Trainer's mixed precision and the dtype a base is loaded in both follow it."""
    has = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if job.train.bf16 == "auto":
        return has
    if job.train.bf16 and not has:
        raise ModelLoadError(
            f"model '{job.name}': train.bf16 is true but this machine has no bf16-capable GPU; use `bf16: auto`"
        )
    return bool(job.train.bf16)


def model_dtype(job: Job, method: str, for_training: bool) -> torch.dtype:
    """A full fine-tune keeps fp32 master weights (bf16 enters as autocast through the Trainer); adapters and
    inference load the base in the compute dtype."""
    if method == "full" and for_training:
        return torch.float32
    return torch.bfloat16 if use_bf16(job) else torch.float32


def effective_method(job: Job) -> tuple[str, list[str]]:
    """QLoRA needs CUDA (bitsandbytes 4-bit). Without it a ``qlora`` entry runs as LoRA, with a warning that
    train_metrics.json and the summary record, so a CPU smoke run of a GPU config still works end to end."""
    if job.method == "qlora" and not torch.cuda.is_available():
        return "lora", [
            f"model '{job.model}': method qlora needs CUDA for 4-bit loading; "
            f"no CUDA device here, so it ran as LoRA in full precision"
        ]
    return job.method, []


def quantization_config(q: QuantizationArgs):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
    )


# --------------------------------------------------------------------------------------------- sources
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "spiece.model", "vocab.json")


def source_key(job: Job, source: str) -> str:
    """The setting a base source came from, for error messages."""
    return f"models.{job.model}.source" if job.source is not None and str(source) == job.source else "--base-dir"


def _written_as_path(source: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything absolute, relative-dotted, home-relative or deeper is a path."""
    return (
        source.startswith(("/", "./", "../", "~", "\\"))
        or source in (".", "..")
        or source.count("/") > 1
        or "\\" in source
        or (len(source) > 1 and source[1] == ":")
    )


def check_local_source(source: str, key: str, need: tuple[str, ...] = ("model", "tokenizer")) -> None:
    """Refuse a local ``source`` that is not a Hugging Face model directory (``need``: what must be in it: the model's
    ``config.json``, a tokenizer). A hub id (not a local path) passes: loading reports what the hub says."""
    path = Path(source).expanduser()
    if not path.exists():
        if _written_as_path(str(source)):
            raise ModelLoadError(f"{key}: '{source}' does not exist (a local model directory or a hub id org/name)")
        return
    if not path.is_dir():
        raise ModelLoadError(f"{key}: '{source}' is a file, not a model directory")
    if "model" in need and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{key}: '{source}' is a local directory without config.json: not a Hugging Face model directory"
        )
    if "tokenizer" in need and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(
            f"{key}: '{source}' is a local directory without a tokenizer (none of {', '.join(TOKENIZER_FILES)})"
        )


# --------------------------------------------------------------------------------------------- loading
def _from_pretrained(loader, source: str, name: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:  # a missing local dir, a hub id not fetchable offline, a foreign config
        raise ModelLoadError(
            f"model '{name}': cannot load '{source}' ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). "
            f"Give a local directory, or a hub id on a machine with hub access (or a filled HF cache)."
        ) from exc


def load_tokenizer(source: str, name: str, family: str, key: str | None = None):
    """The tokenizer of ``source``; ``key``: the setting ``source`` came from (for the one-line refusal of a local
    directory without a tokenizer)."""
    from transformers import AutoTokenizer

    check_local_source(source, key or f"model '{name}': tokenizer source", ("tokenizer",))
    tok = _from_pretrained(AutoTokenizer, source, name)
    if family == "causal":
        tok.padding_side = "left"
        if not getattr(tok, "chat_template", None):
            tok.chat_template = CHAT_TEMPLATE
        choose_pad_token(tok)
    elif tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# pad tokens a chat tokenizer may have besides its end ids: Llama-3.1+'s own, the common names
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "<|padding|>")
RESERVED_PREFIX = "<|reserved_special_token_"  # Llama-3's unused special tokens
ADDED_PAD = "<|pad|>"


def choose_pad_token(tok) -> str | None:
    """Give a chat tokenizer a pad token that is none of its end ids (eos, the template's end of turn:
    kdsum.models.fitting.end_of_turn_ids), so that padding never stands for, nor hides, the token that teaches the model
    to stop. Kept when it is one already (Qwen3's ``<|endoftext|>``); else the first of :data:`PAD_CANDIDATES` in the
    vocabulary, else Llama-3's first reserved special token (``<|reserved_special_token_0|>``), else
    ``<|pad|>`` added (the embeddings then grow: kdsum.models.data_tokens.grow_to_tokenizer). Returns the token chosen,
    None when the pad token was kept."""
    from kdsum.models.fitting import end_of_turn_ids

    ends = set(end_of_turn_ids(tok)) | set(turn_boundary_ids(tok))
    if tok.pad_token_id is not None and tok.pad_token_id not in ends:
        return None
    vocab = tok.get_vocab()
    reserved = sorted((i, t) for t, i in vocab.items() if t.startswith(RESERVED_PREFIX))
    for cand in [*PAD_CANDIDATES, *(t for _, t in reserved)]:
        if cand in vocab and vocab[cand] not in ends:
            tok.pad_token = cand
            return cand
    tok.add_special_tokens({"pad_token": ADDED_PAD})
    log.info("the tokenizer has no pad token besides its end ids: added %s (id %d)", ADDED_PAD, tok.pad_token_id)
    return ADDED_PAD


# three turns of plain ASCII words, so that the text between two of them is the template's own
_TURNS = (("user", "kdsumfirst"), ("assistant", "kdsumsecond"), ("user", "kdsumthird"))


def turn_boundary_ids(tok, kwargs: dict | None = None) -> list[int]:
    """The special tokens the chat template writes between an answer and the next turn's text: the end of turn and
    the next turn's start and header (Llama-3's ``<|eot_id|>``, ``<|start_header_id|>``, ``<|end_header_id|>``;
    ChatML's ``<|im_end|>``, ``<|im_start|>``), read from a render of a three-turn conversation. None belongs in a
    summary: generation stops at each, so that a model that opens a turn without ending its own never leaks a role
    name into the text. Empty without a chat template or when the template refuses the conversation."""
    if not getattr(tok, "chat_template", None):
        return []
    try:
        text = tok.apply_chat_template([{"role": r, "content": c} for r, c in _TURNS], tokenize=False, **(kwargs or {}))
    except Exception:  # a template with its own rules on turns: the end ids alone
        return []
    start, end = text.find(_TURNS[1][1]), text.find(_TURNS[2][1])
    if start < 0 or end < start:
        return []
    gap = tok(text[start + len(_TURNS[1][1]) : end], add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids) | {i for i, t in tok.added_tokens_decoder.items() if t.special}
    special.discard(tok.unk_token_id)  # template text the vocabulary lacks (a newline), not a token of the template
    return [i for i in dict.fromkeys(gap) if i in special]


def load_base_model(job: Job, source: str, method: str | None = None, for_training: bool = True):
    """The base weights of ``job`` from ``source``: seq2seq or causal, in :func:`model_dtype`, 4-bit for QLoRA."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    method = method or effective_method(job)[0]
    check_local_source(source, source_key(job, source), ("model",))
    auto = AutoModelForSeq2SeqLM if job.family == "seq2seq" else AutoModelForCausalLM
    kwargs = {"dtype": model_dtype(job, method, for_training)}
    if method == "qlora":
        kwargs["quantization_config"] = quantization_config(job.quantization)
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # a DDP rank's own (kdsum.gpu.distributed)
    return _from_pretrained(auto, source, job.model, **kwargs)


@dataclass
class LoadedModel:
    """A model ready for generation, with where it came from."""

    model: object
    tokenizer: object
    base: str
    adapter: str | None = None
    merged: bool = False
    notes: list[str] = field(default_factory=list)
    # merged_16bit (QLoRA dequantized + merged), 4bit_unmerged, merged (LoRA merged in the load dtype), full
    load_path: str = "full"
    load_reason: str = ""


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()


def _trained_sources(job: Job, model_dir: str | Path | None, base_dir: str | Path | None) -> tuple[str, str | None]:
    """(weights source, adapter directory or None) of a fine-tuned job's model directory."""
    if model_dir is None:
        raise ModelLoadError(
            f"model '{job.model}' variant '{job.variant}': --model-dir is required "
            f"(the trained model, results/train/{job.name}/model)"
        )
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory not found: {model_dir} (train {job.name} first)")
    if (model_dir / "adapter_config.json").exists():
        if job.family == "seq2seq":
            raise ModelLoadError(f"model '{job.model}' is seq2seq (fully fine-tuned) but {model_dir} is a LoRA adapter")
        named = read_json(model_dir / "adapter_config.json").get("base_model_name_or_path")
        source = base_source(job, base_dir) or named
        if not source:
            raise ModelLoadError(
                f"{model_dir}/adapter_config.json names no base model (base_model_name_or_path); pass --base-dir"
            )
        return source, str(model_dir)
    if (model_dir / "config.json").exists():
        return str(model_dir), None
    raise ModelLoadError(f"{model_dir} holds neither a LoRA adapter (adapter_config.json) nor a model (config.json)")


def _attach_adapter(model, tokenizer, job: Job, adapter: str, source: str, merge: bool):
    from peft import PeftModel

    from kdsum.models.data_tokens import grow_to_tokenizer

    grow_to_tokenizer(model, tokenizer)  # data tokens added at training time: grow the base as training did
    try:
        model = PeftModel.from_pretrained(model, adapter)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"model '{job.model}': cannot load the adapter in {adapter} on base {source}: {first}"
        ) from exc
    return model.merge_and_unload() if merge else model


def dequantize_base(model):
    """A 4-bit (bitsandbytes) model with its quantized linears replaced by 16-bit ones holding the dequantized
    weights, in the model's load dtype (transformers' own ``dequantize``)."""
    out = model.dequantize()
    return model if out is None else out


def _load_path(adapter: str | None, four_bit: bool, qlora_merged: bool) -> str:
    if four_bit:
        return "4bit_unmerged"
    if qlora_merged:
        return "merged_16bit"
    return "merged" if adapter is not None else "full"


def load_for_generation(
    job: Job,
    model_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    device: str | None = None,
    merge_plan: Callable[[str, int], dict] | None = None,
) -> LoadedModel:
    """What a prediction job generates with; see the module docstring. Eval mode, on ``device`` (default: CUDA
    where there is one) unless 4-bit (bitsandbytes places it). ``merge_plan(source, len(tokenizer))``: for a QLoRA
    adapter, ``{"merge": bool, "reason": str}`` (kdsum.gpu.preflight.plan_generation_load); without it the base
    stays 4-bit."""
    method, notes = effective_method(job)
    for n in notes:
        log.warning(n)
    adapter = None
    if job.variant == ZERO_SHOT:
        if model_dir is not None:
            raise ModelLoadError(f"variant '{ZERO_SHOT}' generates with the base model alone: no --model-dir")
        source = tokenizer_source = require_base(job, base_dir, "a zero-shot run")
        tokenizer_key = source_key(job, source)
    else:
        source, adapter = _trained_sources(job, model_dir, base_dir)
        own_tokenizer = _has_tokenizer(Path(model_dir))
        tokenizer_source = str(model_dir) if own_tokenizer else source
        tokenizer_key = "--model-dir" if own_tokenizer or adapter is None else source_key(job, source)
    if adapter is None and job.variant != ZERO_SHOT:
        check_local_source(source, "--model-dir", ("model",))
    elif adapter is None or base_source(job, base_dir) is not None:  # a base named by the adapter: checked on load
        check_local_source(source, source_key(job, source), ("model",))
    tokenizer = load_tokenizer(tokenizer_source, job.model, job.family, key=tokenizer_key)
    load_method = "qlora" if method == "qlora" else "full"
    plan = {"merge": False, "reason": "no merge plan given"} if load_method == "qlora" else {"merge": True}
    if load_method == "qlora" and adapter is not None and merge_plan is not None:
        plan = merge_plan(source, len(tokenizer))
    try:
        model = load_base_model(job, source, method=load_method, for_training=False)
    except ModelLoadError as exc:
        if adapter is not None and base_source(job, base_dir) is None:
            raise ModelLoadError(f"{exc} (the base named by {adapter}/adapter_config.json; pass --base-dir)") from exc
        raise
    merge = bool(plan["merge"])
    qlora_merged = load_method == "qlora" and merge and adapter is not None
    if qlora_merged:  # the adapter learned against the NF4 weights: merge into exactly those, in 16 bits
        model = dequantize_base(model)
    if adapter is not None:
        model = _attach_adapter(model, tokenizer, job, adapter, source, merge)
    elif job.family == "causal":  # a pad token added by choose_pad_token: grow as training grows
        from kdsum.models.data_tokens import grow_to_tokenizer

        grow_to_tokenizer(model, tokenizer)
    four_bit = load_method == "qlora" and not qlora_merged
    if not four_bit:
        model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    path = _load_path(adapter, four_bit, qlora_merged)
    if load_method == "qlora":
        log.info("QLoRA prediction: %s (%s)", path, plan["reason"])
    return LoadedModel(
        model,
        tokenizer,
        source,
        adapter,
        merged=adapter is not None and merge,
        notes=notes,
        load_path=path,
        load_reason=plan.get("reason", ""),
    )
