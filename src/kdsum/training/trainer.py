"""Training stage: full fine-tuning of seq2seq models, LoRA / QLoRA adapters for causal (chat) models.

One entry point, :func:`train`, serves every job (kdsum.config.spec.Job):

- ``seq2seq`` / ``full``: ``Seq2SeqTrainer`` on ``{"source", "target"}`` rows; source cut to ``train.max_length``
  (prediction's encoder budget) and target to ``train.max_target_length`` tokens, both framed ``<s> ... </s>`` as in
  the offline pretraining (kdsum.models.fitting.fit_seq2seq, the rule prediction cuts its inputs by), batches made by
  ``DataCollatorForSeq2Seq``.
- ``causal`` / ``lora`` | ``qlora``: TRL ``SFTTrainer`` on the conversational prompt/completion rows, tokenized
  here (:func:`encode_chat_rows`) with their chat template and the prompt format's template settings
  (kdsum.models.fitting.template_kwargs: ``enable_thinking``, the one prediction renders with; TRL would take them
  from a ``chat_template_kwargs`` column, but it gets the rows tokenized and applies no template), with
  ``completion_only_loss=True`` (prompt tokens get label -100) and ``peft_config=LoraConfig(...)``. The
  tokenizer pads with a token that is no end id (kdsum.models.loading.choose_pad_token: Llama-3 ships none and
  ``<|eot_id|>`` must stay a label), TRL's collator pads on the right with it and labels -100. ``qlora`` loads
  the base model in 4-bit NF4 through kdsum.models.loading.load_base_model and prepares it with
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
FLOPs; ``train.attention`` (kdsum.gpu.attention) picks the varlen kernel instead.

Long rows (:class:`FitReport`): TRL's own truncation would cut a long row from its end, i.e. cut the summary or
leave the row with nothing to learn. Instead every chat row is fitted by kdsum.models.fitting.fit_chat_example: the
*conversation* is cut by the very function prediction uses (kdsum.models.fitting.fit_chat_messages), to the same input
budget (``max_length - generation.max_new_tokens``, lowered where the summary is longer than that leaves room for),
so a row trains on the prompt prediction gives it; the summary and its end-of-turn markup are never cut, and a row
whose summary alone does not fit ``train.max_length`` is dropped. The counts (``rows_cut``, ``rows_dropped``,
``targets_cut`` for seq2seq summaries cut to ``max_target_length``) go to train_metrics.json, and a warning to its
``warnings`` (and so to the summary table) whenever a row was cut or dropped.

Paths: ``--out-dir`` and ``--checkpoint-dir`` are deleted only when they lie under ``./results`` or are marked as
the pipeline's own (kdsum.training.checkpoints.may_delete), and only after the spec, base and prompts were checked and
everything loaded; anything else is refused in one line before anything is read.

Data tokens for hub models: kdsum.models.data_tokens. Resume (fingerprint, checkpoints): kdsum.training.checkpoints. What the
Trainers get overridden with (grad-norm tracking, target token counts): kdsum.training.hooks. The metrics and the
output directory: kdsum.training.report; the output directory is written atomically, so it appears whole or not at
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

from kdsum.config.spec import Job
from kdsum.gpu import distributed
from kdsum.gpu.attention import resolve_attention, set_attention
from kdsum.gpu.kernels import (
    compile_decoder_layers,
    configure_cuda_allocator,
    keep_adapter_inputs_16bit,
    model_type,
    resolve_compile,
    resolve_kernels,
)
from kdsum.gpu.preflight import (
    RankBatch,
    check_spec_fits,
    checkpointing,
    fold_accumulation,
    with_checkpointing,
    written_batch,
)
from kdsum.models.data_tokens import (
    add_data_tokens,
    expose_output_head_bias,
    read_data_tokens,
    resize_for_new_tokens,
    trainable_token_indices,
)
from kdsum.models.finite import check_finite_weights
from kdsum.models.loading import (
    check_local_source,
    effective_method,
    load_base_model,
    load_tokenizer,
    set_seed,
    source_key,
    use_bf16,
)
from kdsum.training import report as train_report
from kdsum.training import tracking
from kdsum.training.candidates import candidate_saver
from kdsum.training.checkpoints import (
    compute_fingerprint,
    in_results_tree,
    prepare_checkpoint_dir,
    refuse_foreign,
    remove_checkpoints,
)
from kdsum.training.data import TrainingError, load_chat_dataset, load_seq2seq_dataset
from kdsum.training.hooks import DivergenceGuard, GradNormTracker, seq2seq_trainer_cls, sft_trainer_cls

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- arguments
def checkpointing_args(enabled: bool) -> dict:
    """transformers 5.23 renamed gradient_checkpointing -> activation_checkpointing (the old name warns); older
    releases (e.g. 5.17 on some GPU images) know only the old one."""
    from transformers import TrainingArguments

    fields = inspect.signature(TrainingArguments.__init__).parameters
    prefix = "activation" if "activation_checkpointing" in fields else "gradient"
    kwargs = {"use_reentrant": False} if enabled else None
    return {f"{prefix}_checkpointing": enabled, f"{prefix}_checkpointing_kwargs": kwargs}


# the pipeline's fixed choices for each trainer's own arguments
SFT_CHOICES = dict(
    packing_strategy="bfd",
    padding_free=False,  # turned on by packing (bfd) only
    completion_only_loss=True,
    assistant_only_loss=False,
    dataset_num_proc=None,
    shuffle_dataset=False,
    use_cache=False,
)
SEQ2SEQ_CHOICES = dict(predict_with_generate=False, remove_unused_columns=False)


def _fixed_arguments(job: Job, batch: RankBatch, output_dir: str, progress: bool) -> dict:
    """TrainingArguments that the pipeline sets itself: the rank's batch (kdsum.gpu.preflight), the mapped fields
    (``bf16: auto``, the checkpointing flag's name) and fixed choices."""
    cuda = torch.cuda.is_available()
    ddp = {"ddp_find_unused_parameters": False} if distributed.world_size() > 1 else {}  # kdsum.gpu.distributed
    return dict(
        per_device_train_batch_size=batch.micro_batch,
        gradient_accumulation_steps=batch.accumulation,
        **checkpointing_args(job.train.gradient_checkpointing),
        **ddp,
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


def trainer_arguments(
    job: Job, batch: RankBatch | None, output_dir: str, progress: bool = True, liger: bool = False
) -> dict:
    """The Trainer's arguments (for :func:`arguments_class`), built in one place: the job's library fields as they are
    (``TrainArgs.trainer_kwargs``: TrainingArguments', and SFTConfig's for a causal job), then what the pipeline sets
    (:func:`_fixed_arguments`). ``batch``: the rank's batch as kdsum.gpu.preflight.fold_accumulation decided it (None:
    as written)."""
    causal = job.family == "causal"
    fixed = _fixed_arguments(job, batch or written_batch(job), output_dir, progress)
    choices = SFT_CHOICES if causal else SEQ2SEQ_CHOICES
    return {**job.train.trainer_kwargs(sft=causal), **fixed, "use_liger_kernel": liger, **choices}


def arguments_class(family: str) -> type:
    """TRL's ``SFTConfig`` for causal jobs, transformers' ``Seq2SeqTrainingArguments`` for seq2seq ones."""
    if family == "causal":
        from trl import SFTConfig

        return SFTConfig
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments


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


# --------------------------------------------------------------------------------------------- building
def _seq2seq_trainer(job, base_source, prompts_dir, args, method, callbacks):
    from transformers import DataCollatorForSeq2Seq

    if method != "full":
        raise TrainingError(f"model '{job.model}': seq2seq models train with method `full`, not {method}")
    tokenizer = load_tokenizer(base_source, job.model, job.family, key=source_key(job, base_source))
    model = load_base_model(job, base_source, method)
    new_ids = add_data_tokens(tokenizer, read_data_tokens(prompts_dir))
    if new_ids:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.config.use_cache = False
    dataset, report = load_seq2seq_dataset(prompts_dir, tokenizer, job, model)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    trainer = seq2seq_trainer_cls()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return trainer, {"new_token_ids": new_ids, "fit": report}


def causal_tokenizer(job, base_source, prompts_dir):
    """The tokenizer a causal job trains with: the base's, with a pad token that is no end id
    (kdsum.models.loading.choose_pad_token) and the data tokens of the prompt set added (kdsum.models.data_tokens); and the ids
    of the data tokens added."""
    tokenizer = load_tokenizer(base_source, job.model, job.family, key=source_key(job, base_source))
    return tokenizer, add_data_tokens(tokenizer, read_data_tokens(prompts_dir))


def _causal_model(job, base_source, tokenizer, new_ids, method, attention):
    """The base model to put adapters on: attention set, grown to the tokenizer (data tokens, an added pad token),
    4-bit prepared for QLoRA."""
    model = load_base_model(job, base_source, method)
    info = {"attn_implementation": set_attention(model, attention)}
    resize_for_new_tokens(model, tokenizer, new_ids)  # a pad token added to the tokenizer grows it too
    if new_ids:  # a hub tokenizer that splits #Person4# etc.: train just those embedding rows
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


def _causal_trainer(job, base_source, prompts_dir, tokenizer, new_ids, args, method, attention, callbacks):
    model, info = _causal_model(job, base_source, tokenizer, new_ids, method, attention)
    dataset, info["fit"] = load_chat_dataset(prompts_dir, tokenizer, job, model)
    trainer = sft_trainer_cls()(
        model=model,
        args=args,
        train_dataset=dataset,  # tokenized and fitted: TRL's max_length truncation finds nothing to cut
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
    configure_cuda_allocator()
    method = method or effective_method(job)[0]
    attention = resolve_attention(job)
    kernels = resolve_kernels(job, model_type(base_source))
    tokenizer = new_ids = None
    if job.family == "causal":
        if method not in ("lora", "qlora"):
            raise TrainingError(f"model '{job.model}': causal models train `lora` or `qlora`, not {method}")
        tokenizer, new_ids = causal_tokenizer(job, base_source, prompts_dir)
    # Before the model is loaded: refuse a job whose estimated peak GPU memory does not fit the card
    # (kdsum.gpu.memory, with the vocabulary the model will have: the tokenizer's length once the data tokens are
    # added, or the config's when larger; a no-op without CUDA or for models the planner does not cover).
    planning = dict(
        attention=attention,
        kernels=kernels,
        vocab=len(tokenizer) if tokenizer is not None else None,
        trainable_tokens=len(new_ids or ()),
    )
    job = with_checkpointing(job, checkpointing(job, base_source, method, **planning))  # auto: only where needed
    batch = fold_accumulation(job, base_source, method, **planning)  # same optimizer steps, larger micro-batches
    memory_plan = check_spec_fits(job, base_source, method, micro_batch=batch.micro_batch, **planning)
    set_seed(job.train.seed)
    args = arguments_class(job.family)(
        **trainer_arguments(job, batch, str(checkpoint_dir), progress, liger=kernels == "liger")
    )
    tracker = GradNormTracker()
    callbacks = [tracker, *(callbacks or [])]
    if job.family == "seq2seq":
        trainer, info = _seq2seq_trainer(job, base_source, prompts_dir, args, method, callbacks)
    else:
        trainer, info = _causal_trainer(
            job, base_source, prompts_dir, tokenizer, new_ids, args, method, attention, callbacks
        )
    trainer.kdsum_grad_tracker = tracker
    trainer.kdsum_guard = DivergenceGuard()
    compiling = job.family == "causal" and resolve_compile(job)
    # compiled layers fuse PEFT's casts already (measured on an H200: no gain there, +11% uncompiled)
    lora = method in ("lora", "qlora") and args.bf16 and not compiling
    uncast = keep_adapter_inputs_16bit(trainer.model) if lora else 0
    compiled = compile_decoder_layers(trainer.model) if compiling else 0
    plan = {k: v for k, v in memory_plan.items() if k != "estimate"}
    fit = info.pop("fit")
    return trainer, {
        "method_effective": method,
        "attention_effective": attention,
        "kernels_effective": kernels,
        "compiled_layers": compiled,
        "gradient_checkpointing_effective": job.train.gradient_checkpointing,
        "accumulation_folded": batch.folded,
        "micro_batch_effective": batch.micro_batch,
        "adapter_inputs_16bit": uncast,
        "memory_plan": plan,
        "data": fit.metrics(),
        "data_warnings": fit.warnings(job),
        **info,
    }


# --------------------------------------------------------------------------------------------- the stage
OUTPUT_MARKER = "train_metrics.json"  # an output directory the stage wrote (it holds the run's fingerprint)
OUTPUT_ENTRIES = {
    "model",
    "candidates",
    "train_metrics.json",
    "log_history.csv",
    "train_summary.json",
    tracking.TRACKING_DIR,
}


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def _check_dirs(
    out_dir: Path, checkpoint_dir: Path, prompts_dir: str | os.PathLike, base_source: str | None = None
) -> None:
    """Refusals before anything is read or deleted: overlapping directories, directories that hold the job's
    inputs or the working directory, and existing directories that are not the pipeline's to delete."""
    out, ckpt = out_dir.resolve(), checkpoint_dir.resolve()
    if out == ckpt or ckpt.is_relative_to(out):
        raise TrainingError(f"--checkpoint-dir {checkpoint_dir} must lie outside --out-dir {out_dir}")
    if out.is_relative_to(ckpt):
        raise TrainingError(f"--out-dir {out_dir} must lie outside --checkpoint-dir {checkpoint_dir}")
    inputs = [("the working directory", Path.cwd()), ("--prompts-dir", Path(prompts_dir))]
    if base_source and Path(base_source).exists():
        inputs.append(("the base model", Path(base_source)))
    for flag, target in (("--out-dir", out), ("--checkpoint-dir", ckpt)):
        for what, path in inputs:
            if _inside(path.resolve(), target):
                raise TrainingError(f"{flag} {target} contains {what} ({path}): it would be deleted")
    if not (Path(prompts_dir) / "train.jsonl").exists():
        raise TrainingError(f"{prompts_dir}: no train.jsonl (run the `prompts` stage first)")
    refuse_foreign(out_dir, "--out-dir", OUTPUT_MARKER)
    refuse_foreign(checkpoint_dir, "--checkpoint-dir")


def _pipeline_made(tmp: Path) -> bool:
    """A leftover ``atomic_dir`` temporary of this stage: under ./results, or holding only what the stage writes."""
    try:
        return tmp.is_dir() and (in_results_tree(tmp) or {p.name for p in tmp.iterdir()} <= OUTPUT_ENTRIES)
    except OSError:
        return False


def _remove_stale_output(out_dir: Path) -> None:
    """A stale result of an earlier run must not survive a rerun looking current. Called once everything loaded,
    and it deletes only what :func:`_check_dirs` allowed (checked again: the directory may have changed)."""
    if out_dir.is_symlink():
        refuse_foreign(out_dir, "--out-dir", OUTPUT_MARKER)
        out_dir.unlink()  # the link, never what it points to
    elif out_dir.exists():
        refuse_foreign(out_dir, "--out-dir", OUTPUT_MARKER)
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        else:
            out_dir.unlink()
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
        if _pipeline_made(stale):
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
    """Train one (model, variant) job and write OUT/model, OUT/train_metrics.json, OUT/train_summary.json,
    OUT/log_history.csv and OUT/tracking atomically.

    Order: refusals (paths, the base source) before anything is read; the fingerprint; the tokenizer, model and
    data loaded and fitted; only then the stale output and stale checkpoints deleted, and training run.

    ``callbacks``: extra ``TrainerCallback`` objects (benchmarks use one to bound wall time). Returns the metrics."""
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    _check_dirs(out_dir, checkpoint_dir, prompts_dir, base_source)
    tracking.check_tracker(job.train.report_to)
    check_local_source(base_source, source_key(job, base_source))
    method, warnings = effective_method(job)
    for w in warnings:
        log.warning(w)
    set_seed(job.train.seed)
    fingerprint = compute_fingerprint(job, base_source, prompts_dir, method)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    saver = candidate_saver(job, checkpoint_dir)  # train.select_checkpoints: kdsum.training.candidates
    callbacks = [*(callbacks or []), *([saver] if saver else [])]
    trainer, info = build_trainer(
        job, base_source, prompts_dir, checkpoint_dir, progress=progress, method=method, callbacks=callbacks
    )
    with distributed.rank_zero_first():  # DDP: rank 0 deletes and prepares, the others then find its checkpoints
        if distributed.is_main():
            _remove_stale_output(out_dir)
        resume = prepare_checkpoint_dir(checkpoint_dir, fingerprint)
    # one tracker per job, on the rank that writes the outputs; after the wipe: it writes into the checkpoint dir
    trackers = tracking.tracking_callbacks(job.train.report_to, checkpoint_dir) if distributed.is_main() else []
    for callback in trackers:
        trainer.add_callback(callback)
    run = train_report.run_training(trainer, resume)
    tracking.finish(trackers)
    warnings = [*warnings, *info["data_warnings"]]
    metrics = train_report.training_metrics(job, trainer, info, run, base_source, warnings, fingerprint)
    if distributed.is_main():
        hint = f"the last checkpoint is kept in {checkpoint_dir}"
        check_finite_weights(trainer.model, f"--out-dir {out_dir}", trainable_only=True, hint=hint)
        train_report.save_outputs(trainer, job, metrics, out_dir, checkpoint_dir)
        if not keep_checkpoints:
            remove_checkpoints(checkpoint_dir)
    return metrics
