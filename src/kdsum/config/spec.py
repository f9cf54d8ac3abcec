"""Typed job specs: what one job reads from the config, resolved once (by ``kdsum.config.resolve``) and written to
``results/specs/*.json`` by the ``spec`` rule. Every other stage reads its spec file, never the config, so a
config change reruns exactly the jobs whose spec changed, under Snakemake and under DVC alike.

Field names of the training, LoRA, quantization and generation settings are those of ``TrainingArguments`` /
``SFTConfig``, ``peft.LoraConfig``, ``BitsAndBytesConfig`` and ``GenerationConfig``: no renaming table. Each of those
fields is declared once, here (:func:`setting`): its type, bounds and description, from which kdsum.config.schema
writes the matching sections of schemas/config.schema.yaml.
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


def setting(description: str, default: Any = dataclasses.MISSING, *, to: str | None = None, **schema: Any) -> Any:
    """A spec field that is also a config setting, declared here once: kdsum.config.schema writes its entry of
    schemas/config.schema.yaml from it (the JSON type from the annotation unless ``schema`` holds an ``enum``,
    ``const``, ``oneOf`` or ``anyOf``; the bounds; the description). ``to``: the library config that takes the field
    as it is (``trainer``: TrainingArguments and so both trainers' arguments; ``sft``: SFTConfig only); None where
    the pipeline maps it itself. Defaults of settings live in config.yaml's ``defaults`` (the schema requires them
    all there); a dataclass default (``select_checkpoints``, ``engine``) only lets a spec file without the field
    read."""
    return field(default=default, metadata={"description": description, "to": to, "schema": schema})


TRAINER, SFT = "trainer", "sft"
LR_SCHEDULERS = ["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"]
AUTO_OR_BOOL = ["auto", True, False]


@dataclass(frozen=True)
class TrainArgs:
    """Training settings; names and meaning those of ``TrainingArguments`` / ``SFTConfig`` where ``to`` says so."""

    seed: int = setting("seed of the model's initialisation, the data order and dropout", to=TRAINER, minimum=0)
    num_train_epochs: float = setting("passes over the training rows", to=TRAINER, exclusiveMinimum=0)
    max_steps: int = setting("optimizer steps; a positive number overrides num_train_epochs", to=TRAINER)
    learning_rate: float = setting("the peak learning rate (AdamW)", to=TRAINER, exclusiveMinimum=0)
    lr_scheduler_type: str = setting("the learning-rate schedule", to=TRAINER, enum=LR_SCHEDULERS)
    warmup_steps: float = setting(
        "steps, an integer (1: one step), or a share of the steps below 1 (0.5: half); 1.0 is refused as ambiguous",
        to=TRAINER,
        anyOf=[{"type": "integer", "minimum": 0}, {"type": "number", "minimum": 0, "exclusiveMaximum": 1}],
    )
    weight_decay: float = setting("AdamW's decoupled weight decay", to=TRAINER, minimum=0)
    max_grad_norm: float = setting("gradient clipping norm", to=TRAINER, exclusiveMinimum=0)
    per_device_train_batch_size: int = setting("rows (or packed bins) per micro-batch", to=TRAINER, minimum=1)
    gradient_accumulation_steps: int = setting(
        "micro-batches per optimizer step on one GPU (the global batch)", to=TRAINER, minimum=1
    )
    max_length: int = setting("prompt + completion tokens (causal) / dialogue tokens (seq2seq)", to=SFT, minimum=8)
    max_target_length: int = setting("summary tokens (seq2seq)", minimum=4)
    packing: bool = setting("pack rows into bins of max_length tokens (TRL's best-fit decreasing)", to=SFT)
    gradient_checkpointing: bool | str = setting(
        "recompute activations in the backward pass (less memory, slower); auto: on CUDA, only where the memory "
        "planner says the job would not fit without it (kdsum.gpu.preflight)",
        enum=AUTO_OR_BOOL,
    )
    attention: str = setting(
        "attention kernel (kdsum.gpu.attention); varlen: packed rows without a dense mask",
        enum=["auto", "sdpa", "eager", "varlen"],
    )
    kernels: str = setting("fused training kernels (kdsum.gpu.kernels)", enum=["auto", "liger", "none"])
    compile: bool | str = setting("compiled decoder layers (kdsum.gpu.kernels)", enum=AUTO_OR_BOOL)
    fold_accumulation: bool | str = setting(
        "auto: on CUDA, train each rank's accumulated micro-batches as one where the memory planner says it fits "
        "(same optimizer steps); false: as written",
        enum=["auto", False],
    )
    num_gpus: int = setting(
        "GPUs (DDP ranks under torchrun) one training job uses; gradient_accumulation_steps is divided among them",
        minimum=1,
    )
    report_to: str = setting(
        "experiment tracker of training (kdsum.training.tracking): tensorboard and wandb need the [tracking] extra",
        enum=["dvclive", "tensorboard", "wandb", "none"],
    )
    bf16: bool | str = setting("bfloat16 mixed precision; auto: where the hardware has it", enum=AUTO_OR_BOOL)
    logging_steps: int = setting("optimizer steps between log entries", to=TRAINER, minimum=1)
    save_steps: int = setting("optimizer steps between checkpoints (resume)", to=TRAINER, minimum=1)
    save_total_limit: int = setting("checkpoints kept for resume", to=TRAINER, minimum=1)
    select_checkpoints: str | list[int] = setting(
        "none, epoch (every epoch's end) or optimizer steps: checkpoints scored on the dev set's tuning rows; the "
        "best becomes the model (the final one is always a candidate)",
        "none",
        oneOf=[
            {"enum": ["none", "epoch"]},
            {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "uniqueItems": True},
        ],
    )

    def trainer_kwargs(self, sft: bool = False) -> dict[str, Any]:
        """The fields that ``TrainingArguments`` (``sft``: ``SFTConfig``) takes as they are."""
        targets = (TRAINER, SFT) if sft else (TRAINER,)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["to"] in targets}


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
    """Adapter settings: ``peft.LoraConfig``'s fields."""

    r: int = setting("adapter rank", to="peft", minimum=1)
    lora_alpha: float = setting("adapter scale numerator (scale = lora_alpha / r)", to="peft", exclusiveMinimum=0)
    lora_dropout: float = setting("dropout on the adapter's input", to="peft", minimum=0, maximum=1)
    target_modules: str | list[str] = setting(
        "the modules that get adapters: all-linear or a list of module names",
        to="peft",
        oneOf=[{"const": "all-linear"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
    )


@dataclass(frozen=True)
class QuantizationArgs:
    """4-bit base weights of method qlora: ``BitsAndBytesConfig``'s fields."""

    bnb_4bit_quant_type: str = setting("4-bit data type", to="bnb", enum=["nf4", "fp4"])
    bnb_4bit_use_double_quant: bool = setting("quantize the quantization constants too", to="bnb")
    bnb_4bit_compute_dtype: str = setting(
        "dtype of the matmuls on dequantized weights", to="bnb", enum=["bfloat16", "float16", "float32"]
    )


@dataclass(frozen=True)
class GenerationArgs:
    """Decoding settings: ``GenerationConfig``'s fields where ``to`` says so, else the pipeline's own."""

    batch_size: int = setting("dialogues per generation batch", minimum=1)
    num_beams: int = setting("beam width; 1: greedy or sampling", to="generation", minimum=1)
    max_new_tokens: int = setting("summary tokens generated at most", to="generation", minimum=1)
    no_repeat_ngram_size: int = setting("n-grams that may not repeat; 0: no limit", to="generation", minimum=0)
    repetition_penalty: float = setting(
        "penalty on tokens already present; 1: none", to="generation", exclusiveMinimum=0
    )
    length_penalty: float = setting("beam search only: exponent of the length normalisation", to="generation")
    do_sample: bool = setting("sample instead of searching", to="generation")
    temperature: float = setting("sampling only: softmax temperature", to="generation", exclusiveMinimum=0)
    top_p: float = setting("sampling only: nucleus mass", to="generation", exclusiveMinimum=0, maximum=1)
    block_foreign_scripts: bool = setting(
        "forbid tokens of scripts foreign to Korean summaries (kdsum.generation.blocking)"
    )
    # a sampled setting is a reproducible job only with its own seed
    seed: int = setting("torch's seed before a sampled generation", minimum=0)
    engine: str = setting(
        "auto: kdsum.generation.engine.greedy where it applies (greedy, supported model), else generate()",
        "auto",
        enum=["auto", "generate"],
    )


@dataclass(frozen=True)
class BuildArgs:
    """A small model built offline (kdsum.models.loading): architecture and the brief pretraining."""

    layers: int
    heads: int
    pretrain_steps: int
    pretrain_learning_rate: float
    pretrain_batch_size: int
    max_position_embeddings: int
    seed: int
    vocab_size: int | None = None  # of the trained tokenizer; None with ``tokenizer``
    d_model: int | None = None  # seq2seq
    ffn_dim: int | None = None
    hidden_size: int | None = None  # causal
    intermediate_size: int | None = None
    tokenizer: str | None = None  # a directory with a real tokenizer (causal); None: one trained on the train split


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
    encoding: str | dict  # auto | a Python codec name, or {split: either} (kdsum.data.ingest.split_encoding)
    leakage: str  # report | refuse | drop_train (kdsum.data.leakage.apply_policy)
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


#: The default of ``evaluation.degenerate_share``: a system whose most common prediction (compared as
#: kdsum.scoring.metrics.output_diversity compares them) is this share of the dialogues or more is degenerate.
DEGENERATE_SHARE = 0.5


@dataclass(frozen=True)
class EvaluationArgs:
    aggregate: str  # mean | max over references
    bootstrap: int
    seed: int
    tuning_fraction: float = 0.5  # expected share of dev rows that select settings (kdsum.selection.tuning)
    degenerate_share: float = DEGENERATE_SHARE  # flagged, never the submitted system (kdsum.scoring.metrics)


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
