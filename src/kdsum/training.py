"""Training stage: full fine-tuning of seq2seq models, LoRA / QLoRA adapters for causal (chat) models.

One entry point, :func:`train`, serves every model of the config:

- ``seq2seq`` / ``full``: ``Seq2SeqTrainer`` on ``{"source", "target"}`` rows; source truncated to
  ``train.max_length`` and target to ``train.max_target_length`` tokens, both framed ``<s> ... </s>`` as in the
  offline pretraining (:func:`encode_seq2seq`), batches made by ``DataCollatorForSeq2Seq``.
- ``causal`` / ``lora`` | ``qlora``: TRL ``SFTTrainer`` on the conversational prompt/completion rows, with
  ``completion_only_loss=True`` (prompt tokens get label -100) and ``peft_config=LoraConfig(...)``. ``qlora`` loads
  the base model in 4-bit NF4 (double quantization, bf16 compute) through :func:`kdsum.modeling.load_model` and
  prepares it with ``peft.prepare_model_for_kbit_training``; without CUDA it runs as LoRA and says so in
  ``train_metrics.json`` (``warnings``, ``method_effective``).

Packing (``train.packing``) uses TRL's best-fit-decreasing packing, which makes padding-free batches: one row of
concatenated sequences, ``position_ids`` restarting at 0 for each, no attention mask. In transformers 5.23
``masking_utils.create_causal_mask`` detects the restarts (``find_packed_sequence_indices``) and builds a
block-diagonal causal mask on the SDPA, eager and flex paths, *provided that no KV cache is passed*; during training
``SFTTrainer.compute_loss`` passes ``use_cache=False`` and the Trainer sets ``config.use_cache = False``, so packed
and unpacked training see the same attention (``tests/test_training.py::test_packing_matches_unpacked`` checks the
losses, and that a cache-carrying forward, where the detection is skipped, does differ). The mask is dense
(``L x L`` over the flattened batch), so on SDPA without a varlen kernel packing saves padding but not attention FLOPs.

Data tokens for hub models: when the tokenizer lacks ``#Person4#``, ``#DateOfBirth#``... they are added
(:func:`kdsum.modeling.add_data_tokens`), the embeddings grown with a deterministic mean init
(:func:`resize_for_new_tokens`), and only those rows trained through ``LoraConfig(trainable_token_indices=...)``
(input embeddings, plus the output head when it is not tied). TRL 1.16 computes the SFT loss through a fused LM
head that reads ``lm_head.bias``, which PEFT's ``TrainableTokensWrapper`` does not expose: see
:func:`expose_output_head_bias`. The adapter stores the trained rows as deltas, never whole embedding matrices;
:func:`load_trained` grows the base the same way before attaching it.

Resume: the Trainer writes ``checkpoint-N`` folders to a checkpoint directory outside the declared outputs, bounded
by ``train.save_total_limit``. A fingerprint of (resolved spec minus generation/bookkeeping keys, effective method,
base model, prompt data, library versions) is stored there; a rerun with the same fingerprint resumes from the last
complete checkpoint, a different one wipes the folder and starts fresh. The output directory is written through
:func:`kdsum.io.atomic_dir`, so it appears whole or not at all; the checkpoints are deleted after a successful run.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import logging
import math
import os
import resource
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from kdsum.attention import resolve_attention, set_attention
from kdsum.io import atomic_dir, read_json, read_jsonl, write_json
from kdsum.modeling import (
    ModelLoadError,
    add_data_tokens,
    effective_method,
    load_model,
    load_tokenizer,
    set_seed,
)

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")
# Settings that do not change what is learned: a change in them must not throw checkpoints away.
_NON_TRAINING_TRAIN_KEYS = ("logging_steps", "save_steps", "save_total_limit")
_GIB = 2**30


class TrainingError(RuntimeError):
    """A training job that cannot run as configured; the message says why."""


# --------------------------------------------------------------------------------------------- small helpers
def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where a package is absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def use_bf16(spec: dict) -> bool:
    """``train.bf16``: true/false, or ``auto`` = where the hardware has it (CUDA with bf16 support)."""
    bf16 = spec["train"].get("bf16", "auto")
    has = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if bf16 == "auto":
        return has
    if bf16 and not has:
        raise TrainingError(f"model '{spec['name']}': train.bf16 is true but this machine has no bf16-capable GPU; "
                            f"use `bf16: auto`")
    return bool(bf16)


def warmup_steps_arg(train_cfg: dict) -> float | int:
    """transformers 5.x dropped ``warmup_ratio``: ``warmup_steps`` takes an int (steps) or a float in [0, 1) (ratio)."""
    if train_cfg.get("warmup_steps") is not None:
        return int(train_cfg["warmup_steps"])
    ratio = float(train_cfg.get("warmup_ratio", 0.0) or 0.0)
    if not 0.0 <= ratio < 1.0:
        raise TrainingError(f"train.warmup_ratio must be in [0, 1), got {ratio}")
    return ratio if ratio > 0 else 0


def _hash_file(path: Path, h, full_limit: int = 64 * 2**20) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as fh:
        if size <= full_limit:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
        else:  # multi-GB weights: size + head + tail is enough to tell two builds apart
            h.update(fh.read(4 * 2**20))
            fh.seek(size - 4 * 2**20)
            h.update(fh.read())


def hash_path(path: str | os.PathLike) -> str:
    """Content hash of a file or of every file under a directory (names relative to it)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(path, h)
    else:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            _hash_file(f, h)
    return h.hexdigest()


def compute_fingerprint(spec: dict, base_source: str, prompts_dir: str | os.PathLike, method: str) -> dict:
    """What a checkpoint was trained with. Same fingerprint = safe to resume."""
    prompts_dir = Path(prompts_dir)
    training_spec = {k: v for k, v in spec.items() if k != "generation"}
    training_spec["train"] = {k: v for k, v in spec["train"].items() if k not in _NON_TRAINING_TRAIN_KEYS}
    base = Path(base_source)
    parts = {
        "spec": training_spec,
        "method_effective": method,
        "base": {"source": base_source, "hash": hash_path(base) if base.exists() else None},
        "prompts": {name: hash_path(prompts_dir / name) for name in ("train.jsonl", "special_tokens.json")
                    if (prompts_dir / name).exists()},
        "libraries": {k: v for k, v in library_versions().items() if k in ("torch", "transformers", "trl", "peft")},
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return {"fingerprint": digest, "parts": parts}


def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` folders, newest first (as transformers' ``get_last_checkpoint`` orders them)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for p in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = p.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found, reverse=True)


def _is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last; a checkpoint is usable once that file is whole."""
    try:
        state = read_json(checkpoint / "trainer_state.json")
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def last_complete_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` that was completely written (a run killed while saving leaves a partial one).

    Read-only: safe to call while a training process is writing checkpoints."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    for _, path in _checkpoints(checkpoint_dir):
        if _is_complete(path):
            return str(path)
    return None


def prepare_checkpoint_dir(checkpoint_dir: str | os.PathLike, fingerprint: dict) -> str | None:
    """Return the checkpoint to resume from, or None. Stale checkpoints (other fingerprint) are wiped, and partial
    checkpoints newer than the resume point are removed."""
    checkpoint_dir = Path(checkpoint_dir)
    fp_path = checkpoint_dir / FINGERPRINT_FILE
    resume = None
    if checkpoint_dir.exists():
        old = None
        if fp_path.exists():
            try:
                old = read_json(fp_path).get("fingerprint")
            except (OSError, ValueError):
                old = None
        if old == fingerprint["fingerprint"]:
            resume = last_complete_checkpoint(checkpoint_dir)
            resume_step = int(Path(resume).name.rsplit("-", 1)[1]) if resume else -1
            for step, path in _checkpoints(checkpoint_dir):
                if step > resume_step:
                    log.warning("removing incomplete checkpoint %s", path)
                    shutil.rmtree(path, ignore_errors=True)
        else:
            if any(checkpoint_dir.iterdir()):
                log.warning("checkpoints in %s were made with other settings (fingerprint %s, now %s): starting fresh",
                            checkpoint_dir, (old or "none")[:12], fingerprint["fingerprint"][:12])
            shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_json(fp_path, fingerprint)
    return resume


def peak_memory() -> tuple[float, str]:
    """(peak GiB, device): CUDA max allocated on a GPU, peak resident set size of this process on the CPU."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / _GIB, 3), f"cuda:{torch.cuda.get_device_name()}"
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB, 3), "cpu"


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); for a PeftModel, PEFT's count (which unpacks 4-bit weights)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def write_log_history(path: str | os.PathLike, history: list[dict]) -> None:
    """The Trainer's log history as CSV (step, epoch, loss, learning_rate, grad_norm first, then the rest)."""
    first = ["step", "epoch", "loss", "learning_rate", "grad_norm", "num_input_tokens_seen"]
    keys = [k for k in first if any(k in row for row in history)]
    keys += sorted({k for row in history for k in row} - set(keys))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in keys})


# --------------------------------------------------------------------------------------------- trainer pieces
def _grad_norm_tracker_cls():
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class GradNormTracker(TrainerCallback, ExportableState):
        """Largest pre-clip gradient norm over every optimizer step (saved into each checkpoint's trainer state)."""

        def __init__(self, max_grad_norm: float | None = None, steps: int = 0, nonfinite: int = 0):
            self.max_grad_norm = max_grad_norm
            self.steps = steps
            self.nonfinite = nonfinite

        def update(self, grad_norm) -> None:
            value = float(grad_norm.item() if hasattr(grad_norm, "item") else grad_norm)
            self.steps += 1
            if not math.isfinite(value):
                self.nonfinite += 1
            elif self.max_grad_norm is None or value > self.max_grad_norm:
                self.max_grad_norm = value

        def state(self) -> dict:
            return {"args": {}, "attributes": {"max_grad_norm": self.max_grad_norm, "steps": self.steps,
                                               "nonfinite": self.nonfinite}}

        def restore(self, checkpoint: str) -> None:
            state = read_json(Path(checkpoint) / "trainer_state.json")
            saved = (state.get("stateful_callbacks") or {}).get(type(self).__name__)
            if isinstance(saved, list):
                saved = saved[-1] if saved else None
            if saved:
                attrs = saved.get("attributes", {})
                self.max_grad_norm = attrs.get("max_grad_norm")
                self.steps = attrs.get("steps", 0)
                self.nonfinite = attrs.get("nonfinite", 0)
            else:  # checkpoint from elsewhere: the logged norms are the best we have
                norms = [r["grad_norm"] for r in state.get("log_history", []) if "grad_norm" in r]
                self.max_grad_norm = max(norms) if norms else None

    return GradNormTracker


class _TrackingMixin:
    """Hooks into the Trainer (transformers 5.23): ``_get_grad_norm`` runs at every optimizer step with the
    pre-clip norm that ``_clip_grad_norm`` returned; ``_track_num_input_tokens`` counts non-padding inputs (for
    seq2seq the decoder's target tokens are added, so tokens/s covers both sides)."""

    kdsum_grad_tracker = None
    kdsum_count_targets = False

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if self.kdsum_grad_tracker is not None and grad_norm is not None:
            self.kdsum_grad_tracker.update(grad_norm)
        return grad_norm

    def _track_num_input_tokens(self, inputs):
        super()._track_num_input_tokens(inputs)
        if self.kdsum_count_targets and self.args.include_num_input_tokens_seen != "no" and "labels" in inputs:
            targets = (inputs["labels"] != -100).sum()
            self.state.num_input_tokens_seen += int(self.accelerator.gather(targets.reshape(1)).sum().item())


def _sft_trainer_cls():
    from trl import SFTTrainer

    class KdsumSFTTrainer(_TrackingMixin, SFTTrainer):
        pass

    return KdsumSFTTrainer


def _seq2seq_trainer_cls():
    from transformers import Seq2SeqTrainer

    class KdsumSeq2SeqTrainer(_TrackingMixin, Seq2SeqTrainer):
        pass

    return KdsumSeq2SeqTrainer


def checkpointing_args(enabled: bool) -> dict:
    """transformers 5.23 renamed gradient_checkpointing -> activation_checkpointing (the old name warns); older
    releases (e.g. 5.17 on some GPU images) know only the old one."""
    from transformers import TrainingArguments

    fields = inspect.signature(TrainingArguments.__init__).parameters
    prefix = "activation" if "activation_checkpointing" in fields else "gradient"
    return {f"{prefix}_checkpointing": enabled,
            f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if enabled else None}


def common_args(spec: dict, output_dir: str, progress: bool = True) -> dict:
    """TrainingArguments fields shared by both families, every one set from ``spec.train``."""
    t = spec["train"]
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),
        learning_rate=float(t["learning_rate"]),
        lr_scheduler_type=t["lr_scheduler_type"],
        warmup_steps=warmup_steps_arg(t),
        weight_decay=float(t["weight_decay"]),
        max_grad_norm=float(t["max_grad_norm"]),
        per_device_train_batch_size=int(t["per_device_batch_size"]),
        gradient_accumulation_steps=int(t["gradient_accumulation_steps"]),
        num_train_epochs=float(t["epochs"]),
        max_steps=int(t.get("max_steps", -1)),
        **checkpointing_args(bool(t["gradient_checkpointing"])),
        bf16=use_bf16(spec),
        fp16=False,
        use_cpu=not cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        logging_strategy="steps",
        logging_steps=int(t["logging_steps"]),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=int(t["save_steps"]),
        save_total_limit=int(t["save_total_limit"]),
        save_only_model=False,           # optimizer, scheduler and RNG states too: resume is exact
        eval_strategy="no",
        seed=int(t["seed"]),
        data_seed=int(t["seed"]),
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def lora_config(spec: dict, trainable_token_indices: Any = None):
    from peft import LoraConfig

    lc = spec["lora"]
    return LoraConfig(
        r=int(lc["r"]), lora_alpha=int(lc["alpha"]), lora_dropout=float(lc["dropout"]),
        target_modules=lc.get("target_modules", "all-linear"), bias="none", task_type="CAUSAL_LM",
        trainable_token_indices=trainable_token_indices,
    )


def resize_for_new_tokens(model, tokenizer, new_ids: list[int]) -> None:
    """Grow the embeddings to the tokenizer and give the new rows a deterministic start: the mean of the old rows
    (input and, if untied, output embeddings), so that training and reloading agree without saving full matrices."""
    if not new_ids:
        return
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for emb in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            w = emb.weight
            if w.shape[0] >= len(tokenizer):
                w[old:] = w[:old].float().mean(0, keepdim=True).to(w.dtype)


def expose_output_head_bias(model) -> int:
    """TRL 1.16's SFTTrainer always computes the loss through a fused LM head that reads ``lm_head.weight`` and
    ``lm_head.bias`` itself. With PEFT trainable tokens on the output embedding (tied, or untied and listed) the
    head is a ``TrainableTokensWrapper``: ``.weight`` gives the merged, differentiable weight (base rows with the
    trained new-token rows), but ``.bias`` raises AttributeError and training crashes at the first step. Give each
    such wrapper the wrapped module's bias (stored in ``__dict__``, so it is not registered twice). Returns how many
    wrappers were patched."""
    patched = 0
    for module in model.modules():
        if type(module).__name__ == "TrainableTokensWrapper":
            original = module.original_module
            if isinstance(original, torch.nn.Linear) and "bias" not in module.__dict__:
                module.__dict__["bias"] = original.bias
                patched += 1
    return patched


def encode_seq2seq(tokenizer, text: str, max_length: int) -> list[int]:
    """``<s> text </s>`` truncated to ``max_length`` ids, as the offline pretraining framed every sequence.

    Tokenizers that add the frame themselves (a post-processor) are left to do so; the prediction stage should
    encode its inputs with this function too."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if eos is not None and ids[-1] == eos:
        ids = ids[:-1]
    ids = ids[: max(1, max_length - 1)]
    return ids + ([eos] if eos is not None else [])


def load_chat_dataset(prompts_dir: str | os.PathLike, split: str = "train"):
    from datasets import Dataset

    path = Path(prompts_dir) / f"{split}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise TrainingError(f"{path}: no rows to train on")
    if "prompt" not in rows[0] or "completion" not in rows[0]:
        raise TrainingError(f"{path}: expected chat prompt/completion rows (formatted with --family chat); "
                            f"got keys {sorted(rows[0])}")
    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def load_seq2seq_dataset(prompts_dir: str | os.PathLike, tokenizer, spec: dict, split: str = "train"):
    from datasets import Dataset

    path = Path(prompts_dir) / f"{split}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise TrainingError(f"{path}: no rows to train on")
    if "source" not in rows[0]:
        raise TrainingError(f"{path}: expected seq2seq source/target rows (formatted with --family seq2seq); "
                            f"got keys {sorted(rows[0])}")
    t = spec["train"]
    data = []
    for r in rows:
        if not r.get("target"):
            continue
        ids = encode_seq2seq(tokenizer, r["source"], int(t["max_length"]))
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                     "labels": encode_seq2seq(tokenizer, r["target"], int(t["max_target_length"]))})
    return Dataset.from_list(data)


def _data_tokens(prompts_dir: str | os.PathLike) -> list[str]:
    path = Path(prompts_dir) / "special_tokens.json"
    return read_json(path)["tokens"] if path.exists() else []


# --------------------------------------------------------------------------------------------- building
def build_trainer(spec: dict, base_source: str, prompts_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                  progress: bool = True, method: str | None = None, callbacks: list | None = None):
    """Tokenizer, model, dataset and Trainer for one job. Returns (trainer, info dict)."""
    method = method or effective_method(spec)[0]
    attention = resolve_attention(spec)
    # Before anything is loaded: refuse a job whose estimated peak GPU memory does not fit the card
    # (kdsum.memory; a no-op without CUDA or for models the planner does not cover).
    from kdsum.memory import check_spec_fits

    memory_plan = check_spec_fits(spec, base_source, method, attention=attention)
    tokenizer = load_tokenizer(base_source, spec["name"], spec["family"])
    set_seed(int(spec["train"]["seed"]))
    info: dict[str, Any] = {"method_effective": method, "attention_effective": attention, "new_token_ids": [],
                            "memory_plan": {k: v for k, v in memory_plan.items() if k != "estimate"}}
    args_kw = common_args(spec, str(checkpoint_dir), progress)
    tracker = _grad_norm_tracker_cls()()

    if spec["family"] == "seq2seq":
        from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

        if method != "full":
            raise TrainingError(f"model '{spec['name']}': seq2seq models train with method `full`, not {method}")
        model = load_model(spec, base_source, method)
        info["new_token_ids"] = add_data_tokens(tokenizer, _data_tokens(prompts_dir))
        if info["new_token_ids"]:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.config.use_cache = False
        dataset = load_seq2seq_dataset(prompts_dir, tokenizer, spec)
        args = Seq2SeqTrainingArguments(**args_kw, predict_with_generate=False, remove_unused_columns=False)
        collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
        trainer = _seq2seq_trainer_cls()(model=model, args=args, train_dataset=dataset, data_collator=collator,
                                         processing_class=tokenizer, callbacks=[tracker, *(callbacks or [])])
        trainer.kdsum_count_targets = True
    else:
        from trl import SFTConfig

        if method not in ("lora", "qlora"):
            raise TrainingError(f"model '{spec['name']}': causal models train `lora` or `qlora`, not {method}")
        model = load_model(spec, base_source, method)
        info["attn_implementation"] = set_attention(model, attention)
        new_ids = add_data_tokens(tokenizer, _data_tokens(prompts_dir))
        info["new_token_ids"] = new_ids
        trainable_tokens = None
        if new_ids:  # a hub tokenizer that splits #Person4# etc.: train just those embedding rows
            resize_for_new_tokens(model, tokenizer, new_ids)
            trainable_tokens = {"embed_tokens": list(new_ids)}
            tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
            if not tied and model.get_output_embeddings() is not None:
                out_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
                trainable_tokens[out_name.rsplit(".", 1)[-1]] = list(new_ids)
            log.info("added %d data tokens to the tokenizer; training those embedding rows", len(new_ids))
        if method == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=bool(spec["train"]["gradient_checkpointing"]),
                gradient_checkpointing_kwargs={"use_reentrant": False})
        t = spec["train"]
        args = SFTConfig(
            **args_kw,
            max_length=int(t["max_length"]),
            packing=bool(t["packing"]),
            packing_strategy="bfd",
            padding_free=False,              # turned on by packing (bfd) only
            completion_only_loss=True,
            assistant_only_loss=False,
            dataset_num_proc=None,
            shuffle_dataset=False,
            use_cache=False,
        )
        dataset = load_chat_dataset(prompts_dir)
        trainer = _sft_trainer_cls()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                     peft_config=lora_config(spec, trainable_tokens),
                                     callbacks=[tracker, *(callbacks or [])])
        info["trainable_tokens"] = trainable_tokens
        if trainable_tokens:
            expose_output_head_bias(trainer.model)
    trainer.kdsum_grad_tracker = tracker
    return trainer, info


# --------------------------------------------------------------------------------------------- the stage
def train(spec: dict, base_source: str, prompts_dir: str | os.PathLike, out_dir: str | os.PathLike,
          checkpoint_dir: str | os.PathLike, keep_checkpoints: bool = False, progress: bool = True,
          callbacks: list | None = None) -> dict:
    """Train one (model, variant) job and write OUT/model, OUT/train_metrics.json, OUT/log_history.csv atomically.

    ``callbacks``: extra ``TrainerCallback`` objects (benchmarks use one to bound wall time). Returns the metrics."""
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    if out_dir.resolve() == checkpoint_dir.resolve() or checkpoint_dir.resolve().is_relative_to(out_dir.resolve()):
        raise TrainingError(f"--checkpoint-dir {checkpoint_dir} must lie outside --out-dir {out_dir}")
    if not (Path(prompts_dir) / "train.jsonl").exists():
        raise TrainingError(f"{prompts_dir}: no train.jsonl (run scripts/format_prompts.py first)")
    # a stale result of an earlier run must not survive a failed rerun looking current
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)

    method, warnings = effective_method(spec)
    for w in warnings:
        log.warning(w)
    seed = int(spec["train"]["seed"])
    set_seed(seed)
    fingerprint = compute_fingerprint(spec, base_source, prompts_dir, method)
    resume = prepare_checkpoint_dir(checkpoint_dir, fingerprint)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    trainer, info = build_trainer(spec, base_source, prompts_dir, checkpoint_dir, progress=progress, method=method,
                                  callbacks=callbacks)
    resumed_from_step = None
    tokens_before = 0
    if resume:
        state = read_json(Path(resume) / "trainer_state.json")
        resumed_from_step = int(state["global_step"])
        tokens_before = int(state.get("num_input_tokens_seen", 0) or 0)
        trainer.kdsum_grad_tracker.restore(resume)
        log.info("resuming from %s (step %d)", resume, resumed_from_step)

    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - start

    state = trainer.state
    losses = [(r["step"], r["loss"]) for r in state.log_history if "loss" in r]
    trainable, total = count_parameters(trainer.model)
    mem, mem_device = peak_memory()
    session_tokens = int(state.num_input_tokens_seen) - tokens_before
    tracker = trainer.kdsum_grad_tracker
    metrics = {
        "model": spec["name"],
        "variant": spec["variant"],
        "family": spec["family"],
        "method": spec["method"],
        "method_effective": method,
        "warnings": list(warnings),
        "base_source": str(base_source),
        "wall_time_s": round(wall, 2),
        "train_tokens": int(state.num_input_tokens_seen),
        "train_tokens_this_run": session_tokens,
        "tokens_per_s": round(session_tokens / wall, 2) if wall > 0 else None,
        "steps": int(state.global_step),
        "epochs": round(float(state.epoch or 0.0), 4),
        "trainable_params": trainable,
        "total_params": total,
        "peak_memory_gb": mem,
        "memory_device": mem_device,
        "first_loss": losses[0][1] if losses else None,
        "final_loss": losses[-1][1] if losses else None,
        "best_loss": min(v for _, v in losses) if losses else None,
        "max_grad_norm": tracker.max_grad_norm,
        "grad_norm_steps": tracker.steps,
        "nonfinite_grad_norms": tracker.nonfinite,
        "resumed_from_step": resumed_from_step,
        "packing": bool(spec["train"].get("packing", False)),
        "attention_effective": info["attention_effective"],
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "new_data_tokens": len(info["new_token_ids"]),
        "seed": seed,
        "fingerprint": fingerprint["fingerprint"],
        "train_config": spec["train"],
        "lora": spec["lora"] if spec["family"] == "causal" else None,
        "versions": library_versions(),
    }

    with atomic_dir(out_dir) as tmp:
        model_dir = tmp / "model"
        if spec["family"] == "causal":
            # embeddings are never saved whole: new data-token rows travel as trainable-token deltas, and
            # load_trained() resizes the base the same way before attaching the adapter
            trainer.model.save_pretrained(model_dir, save_embedding_layers=False)
        else:
            trainer.model.config.use_cache = True
            trainer.save_model(str(model_dir))
        trainer.processing_class.save_pretrained(model_dir)
        write_json(tmp / "train_metrics.json", metrics)
        write_log_history(tmp / "log_history.csv", state.log_history)
    if not keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics


def load_trained(model_dir: str | os.PathLike, spec: dict, base_source: str | None = None, method: str | None = None):
    """Load a trained model for generation: the full seq2seq model, or base + LoRA adapter (the base resized first
    when the training added data tokens). Returns (model, tokenizer), model in eval mode."""
    from transformers import AutoModelForSeq2SeqLM

    model_dir = Path(model_dir)
    tokenizer = load_tokenizer(str(model_dir), spec["name"], spec["family"])
    if spec["family"] == "seq2seq":
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
        return model.eval(), tokenizer
    from peft import PeftModel

    if base_source is None:
        base_source = read_json(model_dir / "adapter_config.json")["base_model_name_or_path"]
    method = method or effective_method(spec)[0]
    base = load_model(spec, base_source, method, for_training=False)
    vocab = base.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        resize_for_new_tokens(base, tokenizer, list(range(vocab, len(tokenizer))))
    try:
        model = PeftModel.from_pretrained(base, str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model '{spec['name']}': cannot load the adapter in {model_dir}: {exc}") from exc
    return model.eval(), tokenizer
