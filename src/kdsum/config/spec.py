"""Typed job specs: what one job reads from the config, resolved once (by ``kdsum.config.resolve``) and written to
``results/specs/*.json`` by the ``spec`` rule. Every other stage reads its spec file, never the config, so a
config change reruns exactly the jobs whose spec changed, under Snakemake and under DVC alike.

Field names of the training, LoRA, quantization and generation settings are those of ``TrainingArguments`` /
``SFTConfig``, ``peft.LoraConfig``, ``BitsAndBytesConfig`` and ``GenerationConfig``: no renaming table.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdsum.errors import KdsumError

ZERO_SHOT = "zeroshot"  # reserved variant name: the base model without fine-tuning
BASELINE_MODEL = "baseline"  # reserved model name: non-neural reference systems
ENSEMBLE_MODEL = "ensemble"  # reserved model name: systems that choose among other systems' summaries


class SpecError(KdsumError):
    """A spec file that cannot be read as the job's spec."""


@dataclass(frozen=True)
class PromptFormat:
    name: str
    system: str
    question: str
    topic: bool
    # Qwen3-style hybrid templates: the think switch, passed to the chat template at training and prediction alike
    # (kdsum.models.fitting.template_kwargs); its default (false) is the schema's
    enable_thinking: bool


# TrainArgs fields that are SFTConfig's or the pipeline's own, not TrainingArguments' (the stage maps them itself)
OWN_TRAIN_FIELDS = frozenset(
    {
        "max_length",
        "packing",
        "bf16",
        "max_target_length",
        "attention",
        "kernels",
        "compile",
        "fold_accumulation",
        "gradient_checkpointing",
        "num_gpus",
        "report_to",
        "select_checkpoints",
    }
)


@dataclass(frozen=True)
class TrainArgs:
    # TrainingArguments / SFTConfig fields, same names and meaning
    seed: int
    num_train_epochs: float
    max_steps: int
    learning_rate: float
    lr_scheduler_type: str
    warmup_steps: float  # an int counts steps, a float in [0, 1) is a share of them (transformers 5)
    weight_decay: float
    max_grad_norm: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    max_length: int  # prompt + completion tokens (causal) / dialogue tokens (seq2seq)
    packing: bool
    gradient_checkpointing: bool
    logging_steps: int
    save_steps: int
    save_total_limit: int
    bf16: bool | str  # true / false / "auto" (where the hardware has it)
    # the pipeline's own
    max_target_length: int  # summary tokens (seq2seq)
    attention: str  # auto | sdpa | eager | varlen (kdsum.gpu.attention)
    kernels: str  # auto | liger | none (kdsum.gpu.kernels)
    compile: bool | str  # true / false / "auto": compiled decoder layers (kdsum.gpu.kernels)
    fold_accumulation: bool | str  # "auto" / false: accumulation as one micro-batch where it fits (kdsum.gpu.preflight)
    num_gpus: int  # DDP ranks (kdsum.gpu.distributed); the global batch stays that of one GPU
    report_to: str  # dvclive | tensorboard | wandb | none (kdsum.training.tracking; the Trainer itself gets "none")
    # none | epoch | a list of optimizer steps: the checkpoints kept as candidates for selection by ROUGE on the
    # dev set's tuning rows (kdsum.training.candidates); the final model is always one
    select_checkpoints: str | list[int] = "none"

    def trainer_kwargs(self) -> dict[str, Any]:
        """The fields that ``TrainingArguments`` takes as they are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in OWN_TRAIN_FIELDS}


class BatchError(SpecError):
    """Training settings that cannot keep the one-GPU global batch on several GPUs."""


def per_rank_accumulation(gradient_accumulation_steps: int, num_gpus: int) -> int:
    """The accumulation each of ``num_gpus`` ranks runs so that the global batch stays that of one GPU
    (``per_device_train_batch_size x gradient_accumulation_steps``); refuses what does not divide."""
    if num_gpus < 1 or gradient_accumulation_steps % num_gpus:
        raise BatchError(
            f"key 'train.gradient_accumulation_steps' ({gradient_accumulation_steps}) must be a multiple of "
            f"'train.num_gpus' ({num_gpus}): each GPU accumulates an equal share of the one-GPU global batch"
        )
    return gradient_accumulation_steps // num_gpus


@dataclass(frozen=True)
class LoraArgs:
    # peft.LoraConfig fields
    r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: str | list[str]


@dataclass(frozen=True)
class QuantizationArgs:
    # BitsAndBytesConfig fields (used by method: qlora)
    bnb_4bit_quant_type: str
    bnb_4bit_use_double_quant: bool
    bnb_4bit_compute_dtype: str


@dataclass(frozen=True)
class GenerationArgs:
    # GenerationConfig fields
    num_beams: int
    max_new_tokens: int
    no_repeat_ngram_size: int
    repetition_penalty: float
    length_penalty: float  # beam search only
    do_sample: bool
    temperature: float  # sampling only
    top_p: float  # sampling only
    # the pipeline's own
    batch_size: int
    block_foreign_scripts: bool
    seed: int  # torch's seed before a sampled generation, so a sampled setting is a reproducible job
    engine: str = (
        "auto"  # auto: kdsum.generation.engine.greedy where it applies (greedy, supported model), else generate()
    )


@dataclass(frozen=True)
class BuildArgs:
    """A small model built offline (kdsum.models.loading): architecture and the brief pretraining."""

    vocab_size: int
    layers: int
    heads: int
    pretrain_steps: int
    pretrain_learning_rate: float
    pretrain_batch_size: int
    max_position_embeddings: int
    seed: int
    d_model: int | None = None  # seq2seq
    ffn_dim: int | None = None
    hidden_size: int | None = None  # causal
    intermediate_size: int | None = None


@dataclass(frozen=True)
class Job:
    """One model under one variant (or ``zeroshot``): what training and prediction read."""

    model: str
    variant: str
    family: str  # seq2seq | causal
    method: str  # full | lora | qlora
    source: str | None  # hub id or local path; None when built offline
    build: BuildArgs | None
    prompt: PromptFormat | None  # chat models only
    train: TrainArgs
    lora: LoraArgs
    quantization: QuantizationArgs
    generation: GenerationArgs

    @property
    def name(self) -> str:
        return f"{self.model}/{self.variant}"

    @property
    def prompt_set(self) -> str:
        return prompt_set_name(self.family, self.prompt.name if self.prompt else None)


@dataclass(frozen=True)
class DataSpec:
    """The raw splits that ingest reads."""

    train: str
    dev: str | None
    test: str | None
    encoding: str  # auto | a Python codec name
    allow_leakage: bool
    near_duplicate_threshold: float

    def splits(self) -> dict[str, str]:
        return {s: p for s, p in (("train", self.train), ("dev", self.dev), ("test", self.test)) if p}


@dataclass(frozen=True)
class PromptSetSpec:
    name: str  # seq2seq | chat-<format>
    family: str
    format: PromptFormat | None


@dataclass(frozen=True)
class BaseSpec:
    model: str
    family: str
    build: BuildArgs


@dataclass(frozen=True)
class EvaluationArgs:
    aggregate: str  # mean | max over references
    bootstrap: int
    seed: int
    tuning_fraction: float = 0.5  # expected share of dev rows that select settings (kdsum.selection.tuning)


@dataclass(frozen=True)
class SystemRow:
    """A row of results/summary.csv."""

    name: str
    model: str
    variant: str
    kind: str  # fine-tuned | zero-shot | baseline | ensemble
    family: str | None = None
    method: str | None = None
    source: str | None = None
    built: bool = False


@dataclass(frozen=True)
class SummarySpec:
    split: str | None  # the scored split, if any
    systems: list[SystemRow] = field(default_factory=list)
    # the paired bootstrap of every system against the best one (kdsum.reporting.comparisons); the evaluation's settings
    bootstrap: int = 1000
    seed: int = 0
    # the decoding search's settings (kdsum.selection.select); fine-tuned systems then report their selected setting's
    # score on the dev set's report rows (kdsum.selection.tuning)
    decoding: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EnsembleSpec:
    """An ensemble system: per dialogue, one of its member systems' summaries (kdsum.selection.mbr)."""

    name: str
    method: str  # mbr
    systems: list[str]  # member system names (model/variant), in config order: the tie-break order


@dataclass(frozen=True)
class ReportSpec:
    """The examples page of the Snakemake report (kdsum.reporting.report_page)."""

    split: str
    systems: list[SystemRow]
    sample: int  # dialogues drawn at random (seeded)
    worst: int  # the best system's lowest-scoring dialogues
    seed: int


def prompt_set_name(family: str, format_name: str | None) -> str:
    return "seq2seq" if family == "seq2seq" else f"chat-{format_name}"


SPEC_TYPES = {
    cls.__name__: cls
    for cls in (Job, DataSpec, PromptSetSpec, BaseSpec, EvaluationArgs, SummarySpec, EnsembleSpec, ReportSpec)
}


# ------------------------------------------------------------------------------------------------ JSON
def to_dict(spec: Any) -> dict:
    return {"kind": type(spec).__name__, **dataclasses.asdict(spec)}


def to_json(spec: Any) -> str:
    return json.dumps(to_dict(spec), sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def _build(tp: Any, value: Any) -> Any:
    """``value`` (from JSON) as type ``tp``: nested dataclasses, optionals and lists."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(value) - names
        if unknown:
            raise TypeError(f"unknown field(s) {sorted(unknown)} for {tp.__name__}")
        return tp(**{k: _build(hints[k], v) for k, v in value.items()})
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            if dataclasses.is_dataclass(arg) or typing.get_origin(arg) is list:
                if isinstance(value, (dict, list)):
                    return _build(arg, value)
            elif isinstance(value, arg if isinstance(arg, type) else object):
                return value
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, v) for v in value]
    return value


def from_dict(data: dict, expected: type | None = None) -> Any:
    data = dict(data)
    kind = data.pop("kind", None)
    cls = SPEC_TYPES.get(kind)
    if cls is None or (expected is not None and cls is not expected):
        want = expected.__name__ if expected else "a spec"
        raise SpecError(f"expected {want}, found kind {kind!r}")
    return _build(cls, data)


def read_spec(path: str | Path, expected: type | None = None) -> Any:
    """Read a spec file written by ``kdsum spec``; a wrong or stale file is a one-line error naming it."""
    path = Path(path)
    try:
        return from_dict(json.loads(path.read_text(encoding="utf-8")), expected)
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path} (written by the `spec` rule)") from None
    except (ValueError, TypeError, SpecError) as exc:
        raise SpecError(f"{path}: not a valid spec file ({exc}); rerun the `spec` rule") from None
