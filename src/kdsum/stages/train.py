"""Fine-tune one model under one variant: full seq2seq, or LoRA / QLoRA adapters for a causal chat model.

    kdsum train --spec results/specs/model/M/V.json --prompts-dir results/prompts/P [--base-dir results/base/M] \\
        --out-dir results/train/M/V --checkpoint-dir results/checkpoints/M/V [--keep-checkpoints]

The base is --base-dir for a model built offline, else the spec's source (hub id or local path). Writes,
atomically, OUT/model/ (adapter + tokenizer, or the full model + tokenizer), OUT/train_metrics.json and
OUT/log_history.csv. Intermediate checkpoints go to --checkpoint-dir (outside OUT) with a fingerprint of the
settings, base model and prompt data: a rerun with the same fingerprint resumes from the last checkpoint, a
different one starts fresh. The checkpoints are deleted after a successful run unless --keep-checkpoints.

Long rows: the conversation is cut (never the summary) by the rule prediction uses; rows whose summary alone does
not fit are dropped; train_metrics.json counts both (rows_cut, rows_dropped; targets_cut for seq2seq) and warns.
Deleting: an existing --out-dir / --checkpoint-dir is replaced only when it lies under ./results or is marked as
the pipeline's own (train_metrics.json / fingerprint.json), and only once the spec, base and prompts loaded;
anything else is refused in one line (exit 2) before anything is read. A local base that is no model directory
(no config.json or no tokenizer) is refused first, naming models.<name>.source or --base-dir.
"""

from __future__ import annotations

import argparse
import sys

import torch

from kdsum.config.spec import Job, per_rank_accumulation, read_spec
from kdsum.gpu import distributed
from kdsum.gpu import slots as gpu_slots
from kdsum.models.loading import require_base
from kdsum.training.trainer import train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="kdsum train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the job's spec (results/specs/model/M/V.json)")
    ap.add_argument("--prompts-dir", required=True, help="the job's prompt set (train.jsonl, special_tokens.json)")
    ap.add_argument("--base-dir", help="the built base model (results/base/M), for a model built offline")
    ap.add_argument("--out-dir", required=True, help="results/train/M/V")
    ap.add_argument("--checkpoint-dir", required=True, help="results/checkpoints/M/V (outside the outputs)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints after success")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    job = read_spec(args.spec, Job)
    num_gpus = job.train.num_gpus
    per_rank_accumulation(job.train.gradient_accumulation_steps, num_gpus)  # refused before any launch
    # before torch touches CUDA: num_gpus free devices, held until the job ends (kdsum.gpu.slots)
    with gpu_slots.claim(num_gpus):
        if distributed.needs_launch(num_gpus):  # this process becomes the launcher of num_gpus ranks
            status = distributed.launch(["train", *argv], num_gpus)
            if status:
                sys.exit(status)
            return
        run(args, job)


def run(args: argparse.Namespace, job: Job) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    distributed.setup_rank()
    source = require_base(job, args.base_dir, "training")
    metrics = train(
        job,
        source,
        args.prompts_dir,
        args.out_dir,
        args.checkpoint_dir,
        keep_checkpoints=args.keep_checkpoints,
        progress=not args.no_progress,
    )
    if not distributed.is_main():  # one report per job
        return
    resumed = f", resumed from step {metrics['resumed_from_step']}" if metrics["resumed_from_step"] else ""
    print(
        f"trained {job.name} ({metrics['method_effective']}): {metrics['steps']} steps in "
        f"{metrics['wall_time_s']:.1f}s{resumed}, loss {metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}, "
        f"{metrics['tokens_per_s']:.0f} tokens/s; wrote {args.out_dir}"
    )
    for w in metrics["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
