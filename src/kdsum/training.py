"""Training stage: full fine-tuning of seq2seq models, LoRA / QLoRA adapters for causal (chat) models.

One entry point, :func:`train`, serves every job (kdsum.spec.Job):

- ``seq2seq`` / ``full``: ``Seq2SeqTrainer`` on ``{"source", "target"}`` rows; source truncated to
  ``train.max_length`` and target to ``train.max_target_length`` tokens, both framed ``<s> ... </s>`` as in the
  offline pretraining (kdsum.generation.encode_seq2seq), batches made by ``DataCollatorForSeq2Seq``.
- ``causal`` / ``lora`` | ``qlora``: TRL ``SFTTrainer`` on the conversational prompt/completion rows, with
  ``completion_only_loss=True`` (prompt tokens get label -100) and ``peft_config=LoraConfig(...)``. ``qlora`` loads
  the base model in 4-bit NF4 through kdsum.modeling.load_base_model and prepares it with
  ``peft.prepare_model_for_kbit_training``; without CUDA it runs as LoRA and says so in ``train_metrics.json``
  (``warnings``, ``method_effective``).

Packing (``train.packing``) uses TRL's best-fit-decreasing packing, which makes padding-free batches: one row of
concatenated sequences, ``position_ids`` restarting at 0 for each, no attention mask. In transformers 5.23
``masking_utils.create_causal_mask`` detects the restarts (``find_packed_sequence_indices``) and builds a
block-diagonal causal mask on the SDPA, eager and flex paths, *provided that no KV cache is passed*; during training
``SFTTrainer.compute_loss`` passes ``use_cache=False`` and the Trainer sets ``config.use_cache = False``, so packed
and unpacked training see the same attention (``tests/test_training.py::test_packing_matches_unpacked`` checks the
losses, and that a cache-carrying forward, where the detection is skipped, does differ). The mask is dense
(``L x L`` over the flattened batch), so on SDPA without a varlen kernel packing saves padding but not attention
FLOPs; ``train.attention`` (kdsum.attention) picks the varlen kernel instead.

Data tokens for hub models: kdsum.embeddings. Resume (fingerprint, checkpoints): kdsum.checkpoints. What the
Trainers get overridden with (grad-norm tracking, target token counts): kdsum.trainer_hooks. The metrics and the
output directory: kdsum.train_report; the output directory is written atomically, so it appears whole or not at
all, and the checkpoints are deleted after a successful run.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from kdsum import train_report
from kdsum.attention import resolve_attention, set_attention
from kdsum.checkpoints import compute_fingerprint, prepare_checkpoint_dir
from kdsum.embeddings import (
    add_data_tokens,
    expose_output_head_bias,
    read_data_tokens,
    resize_for_new_tokens,
    trainable_token_indices,
)
from kdsum.errors import KdsumError
from kdsum.generation import encode_seq2seq
from kdsum.io import read_jsonl
from kdsum.modeling import effective_method, load_base_model, load_tokenizer, set_seed, use_bf16
from kdsum.preflight import check_spec_fits
from kdsum.spec import Job
from kdsum.trainer_hooks import GradNormTracker, seq2seq_trainer_cls, sft_trainer_cls

log = logging.getLogger(__name__)


class TrainingError(KdsumError):
    """A training job that cannot run as configured; the message says why."""


# --------------------------------------------------------------------------------------------- arguments
def checkpointing_args(enabled: bool) -> dict:
    """transformers 5.23 renamed gradient_checkpointing -> activation_checkpointing (the old name warns); older
    releases (e.g. 5.17 on some GPU images) know only the old one."""
    from transformers import TrainingArguments

    fields = inspect.signature(TrainingArguments.__init__).parameters
    prefix = "activation" if "activation_checkpointing" in fields else "gradient"
    kwargs = {"use_reentrant": False} if enabled else None
    return {f"{prefix}_checkpointing": enabled, f"{prefix}_checkpointing_kwargs": kwargs}


def training_arguments(job: Job, output_dir: str, progress: bool = True) -> dict:
    """TrainingArguments fields shared by both families: the job's own (``TrainArgs.trainer_kwargs``, as they are)
    and the pipeline's fixed choices."""
    cuda = torch.cuda.is_available()
    return dict(
        **job.train.trainer_kwargs(),
        **checkpointing_args(job.train.gradient_checkpointing),
        output_dir=str(output_dir),
        bf16=use_bf16(job),
        fp16=False,
        use_cpu=not cuda,
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        logging_strategy="steps",
        logging_first_step=True,
        save_strategy="steps",
        save_only_model=False,  # optimizer, scheduler and RNG states too: resume is exact
        eval_strategy="no",
        data_seed=job.train.seed,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )


def lora_config(job: Job, trainable_token_indices: Any = None):
    from peft import LoraConfig

    lora = job.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.lora_alpha,  # a float: alpha 0.5 stays 0.5
        lora_dropout=lora.lora_dropout,
        target_modules=lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
        trainable_token_indices=trainable_token_indices,
    )


# --------------------------------------------------------------------------------------------- datasets
def _read_rows(prompts_dir: str | os.PathLike, split: str, key: str, family: str) -> list[dict]:
    path = Path(prompts_dir) / f"{split}.jsonl"
    rows = read_jsonl(path)
    if not rows:
        raise TrainingError(f"{path}: no rows to train on")
    if key not in rows[0]:
        raise TrainingError(
            f"{path}: expected {family} rows (key '{key}', the {family} prompt set); got keys {sorted(rows[0])}"
        )
    return rows


def load_chat_dataset(prompts_dir: str | os.PathLike, split: str = "train"):
    from datasets import Dataset

    rows = _read_rows(prompts_dir, split, "prompt", "chat prompt/completion")
    if "completion" not in rows[0]:
        raise TrainingError(f"{Path(prompts_dir) / f'{split}.jsonl'}: chat rows without a completion")
    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def load_seq2seq_dataset(prompts_dir: str | os.PathLike, tokenizer, job: Job, split: str = "train"):
    from datasets import Dataset

    rows = _read_rows(prompts_dir, split, "source", "seq2seq source/target")
    data = []
    for r in rows:
        if not r.get("target"):
            continue
        ids = encode_seq2seq(tokenizer, r["source"], job.train.max_length)
        labels = encode_seq2seq(tokenizer, r["target"], job.train.max_target_length)
        data.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return Dataset.from_list(data)


# --------------------------------------------------------------------------------------------- building
def _seq2seq_trainer(job, base_source, prompts_dir, args_kw, method, callbacks):
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

    if method != "full":
        raise TrainingError(f"model '{job.model}': seq2seq models train with method `full`, not {method}")
    tokenizer = load_tokenizer(base_source, job.model, job.family)
    model = load_base_model(job, base_source, method)
    new_ids = add_data_tokens(tokenizer, read_data_tokens(prompts_dir))
    if new_ids:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.use_cache = False
    dataset = load_seq2seq_dataset(prompts_dir, tokenizer, job)
    args = Seq2SeqTrainingArguments(**args_kw, predict_with_generate=False, remove_unused_columns=False)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    trainer = seq2seq_trainer_cls()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return trainer, {"new_token_ids": new_ids}


def _causal_model(job, base_source, prompts_dir, tokenizer, method, attention):
    """The base model to put adapters on: attention set, data tokens added, 4-bit prepared for QLoRA."""
    model = load_base_model(job, base_source, method)
    info = {"attn_implementation": set_attention(model, attention)}
    new_ids = add_data_tokens(tokenizer, read_data_tokens(prompts_dir))
    if new_ids:  # a hub tokenizer that splits #Person4# etc.: train just those embedding rows
        resize_for_new_tokens(model, tokenizer, new_ids)
        log.info("added %d data tokens to the tokenizer; training those embedding rows", len(new_ids))
    info.update(new_token_ids=new_ids, trainable_tokens=trainable_token_indices(model, new_ids))
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=job.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model, info


def _causal_trainer(job, base_source, prompts_dir, args_kw, method, attention, callbacks):
    from trl import SFTConfig

    if method not in ("lora", "qlora"):
        raise TrainingError(f"model '{job.model}': causal models train `lora` or `qlora`, not {method}")
    tokenizer = load_tokenizer(base_source, job.model, job.family)
    model, info = _causal_model(job, base_source, prompts_dir, tokenizer, method, attention)
    args = SFTConfig(
        **args_kw,
        max_length=job.train.max_length,
        packing=job.train.packing,
        packing_strategy="bfd",
        padding_free=False,  # turned on by packing (bfd) only
        completion_only_loss=True,
        assistant_only_loss=False,
        dataset_num_proc=None,
        shuffle_dataset=False,
        use_cache=False,
    )
    trainer = sft_trainer_cls()(
        model=model,
        args=args,
        train_dataset=load_chat_dataset(prompts_dir),
        processing_class=tokenizer,
        peft_config=lora_config(job, info["trainable_tokens"]),
        callbacks=callbacks,
    )
    if info["trainable_tokens"]:
        expose_output_head_bias(trainer.model)
    return trainer, info


def build_trainer(
    job: Job,
    base_source: str,
    prompts_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    progress: bool = True,
    method: str | None = None,
    callbacks: list | None = None,
):
    """Tokenizer, model, dataset and Trainer for one job. Returns (trainer, info dict)."""
    method = method or effective_method(job)[0]
    attention = resolve_attention(job)
    # Before anything is loaded: refuse a job whose estimated peak GPU memory does not fit the card
    # (kdsum.memory; a no-op without CUDA or for models the planner does not cover).
    memory_plan = check_spec_fits(job, base_source, method, attention=attention)
    set_seed(job.train.seed)
    args_kw = training_arguments(job, str(checkpoint_dir), progress)
    tracker = GradNormTracker()
    callbacks = [tracker, *(callbacks or [])]
    if job.family == "seq2seq":
        trainer, info = _seq2seq_trainer(job, base_source, prompts_dir, args_kw, method, callbacks)
    else:
        trainer, info = _causal_trainer(job, base_source, prompts_dir, args_kw, method, attention, callbacks)
    trainer.kdsum_grad_tracker = tracker
    plan = {k: v for k, v in memory_plan.items() if k != "estimate"}
    return trainer, {"method_effective": method, "attention_effective": attention, "memory_plan": plan, **info}


# --------------------------------------------------------------------------------------------- the stage
def _check_dirs(out_dir: Path, checkpoint_dir: Path, prompts_dir: str | os.PathLike) -> None:
    out, ckpt = out_dir.resolve(), checkpoint_dir.resolve()
    if out == ckpt or ckpt.is_relative_to(out):
        raise TrainingError(f"--checkpoint-dir {checkpoint_dir} must lie outside --out-dir {out_dir}")
    if not (Path(prompts_dir) / "train.jsonl").exists():
        raise TrainingError(f"{prompts_dir}: no train.jsonl (run the `prompts` stage first)")


def _remove_stale_output(out_dir: Path) -> None:
    """A stale result of an earlier run must not survive a failed rerun looking current."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def train(
    job: Job,
    base_source: str,
    prompts_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    keep_checkpoints: bool = False,
    progress: bool = True,
    callbacks: list | None = None,
) -> dict:
    """Train one (model, variant) job and write OUT/model, OUT/train_metrics.json, OUT/log_history.csv atomically.

    ``callbacks``: extra ``TrainerCallback`` objects (benchmarks use one to bound wall time). Returns the metrics."""
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    _check_dirs(out_dir, checkpoint_dir, prompts_dir)
    _remove_stale_output(out_dir)
    method, warnings = effective_method(job)
    for w in warnings:
        log.warning(w)
    set_seed(job.train.seed)
    fingerprint = compute_fingerprint(job, base_source, prompts_dir, method)
    resume = prepare_checkpoint_dir(checkpoint_dir, fingerprint)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer, info = build_trainer(
        job, base_source, prompts_dir, checkpoint_dir, progress=progress, method=method, callbacks=callbacks
    )
    run = train_report.run_training(trainer, resume)
    metrics = train_report.training_metrics(job, trainer, info, run, base_source, warnings, fingerprint)
    train_report.save_outputs(trainer, job, metrics, out_dir)
    if not keep_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return metrics
