"""Generate one summary per dialogue of a split with a trained (or zero-shot) model.

    kdsum predict --spec results/specs/model/M/V.json --split S --prompts-dir DIR \\
        [--model-dir results/train/M/V/model | --checkpoint results/selection/M/V/checkpoint.json] \\
        [--base-dir results/base/M] --out results/predictions/M/V/S.csv

DIR is the job's prompt set (results/prompts/P): DIR/S.jsonl holds the prompts and DIR/special_tokens.json the data
tokens that foreign-script blocking leaves allowed. A fine-tuned job needs --model-dir, or --checkpoint: the checkpoint search's choice, naming the
training candidate to load (kdsum.selection.choice.chosen_model_dir); the zero-shot variant
generates with the base alone. --base-dir is the built base of a model built offline (else the spec's source is
the base). --decoding replaces the spec's generation settings by those the decoding search selected. Writes a CSV ``fname,summary`` in the split's order, whole or not at all; a progress bar and the speed
(dialogues/s) go to stderr. Loading: kdsum.models.loading.load_for_generation; generation: kdsum.generation.predict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from kdsum.config.spec import DEGENERATE_SHARE, Job, read_spec
from kdsum.generation.predict import predict_rows, read_prompt_rows
from kdsum.gpu import slots as gpu_slots
from kdsum.io import write_csv
from kdsum.korean.diagnostics import degenerate_warning, repetition
from kdsum.models.loading import LoadedModel
from kdsum.selection.choice import chosen_model_dir, with_selected_decoding


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="kdsum predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the job's spec (results/specs/model/M/V.json)")
    ap.add_argument("--split", required=True)
    ap.add_argument("--prompts-dir", required=True)
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--model-dir", help="the trained model (results/train/M/V/model); not for zero-shot")
    model.add_argument("--checkpoint", help="the checkpoint search's choice (results/selection/M/V/checkpoint.json)")
    ap.add_argument("--base-dir", help="the built base model (results/base/M), for a model built offline")
    ap.add_argument("--decoding", help="the decoding search's choice (results/selection/M/V/decoding.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's own choice). On a shared CPU fewer threads can be much "
        "faster: OpenMP threads spin while they wait for a core",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def summary_line(job: Job, split: str, stats: dict, summaries: list[str], loaded: LoadedModel) -> str:
    empty = sum(1 for s in summaries if not s)
    adapter = f"{loaded.adapter}{' (merged)' if loaded.merged else ''}" if loaded.adapter else "none"
    return (
        f"{job.name} {split}: {stats['rows']} dialogues in {stats['seconds']:.1f} s "
        f"({stats['dialogues_per_s']:.2f} dialogues/s; {stats['truncated']} inputs cut to "
        f"{stats['input_budget']} tokens; {empty} empty summaries; foreign-script blocking "
        f"{'on' if stats['blocked'] else 'off'}; engine: {stats['engine']}; adapter: {adapter}; "
        f"device: {loaded.model.device}; load: {stats.get('load_path', loaded.load_path)} "
        f"in {stats.get('load_seconds', 0.0):.1f} s{'; ' + loaded.load_reason if loaded.load_reason else ''})"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    job = read_spec(args.spec, Job)
    with gpu_slots.claim(1):  # a free device, before torch touches CUDA (kdsum.gpu.slots)
        run(args, job)


def run(args: argparse.Namespace, job: Job) -> None:
    prompts_dir = Path(args.prompts_dir)
    rows = read_prompt_rows(prompts_dir / f"{args.split}.jsonl", job.family)
    if args.checkpoint:  # the candidate the checkpoint search chose, where training wrote it
        args.model_dir = chosen_model_dir(job, args.checkpoint)
    if args.decoding:  # the setting the decoding search selected on the dev set's tuning rows
        job = with_selected_decoding(job, args.decoding)
    stats: dict = {}
    summaries, loaded = predict_rows(
        job, rows, prompts_dir, args.model_dir, args.base_dir, progress=not args.no_progress, stats=stats
    )
    write_csv(args.out, pd.DataFrame({"fname": [r["fname"] for r in rows], "summary": summaries}))
    print(summary_line(job, args.split, stats, summaries, loaded), file=sys.stderr)
    # evaluation.degenerate_share's default (its evaluate job applies the configured one)
    if warning := degenerate_warning(f"{job.name} {args.split}", repetition(summaries), DEGENERATE_SHARE):
        print(warning, file=sys.stderr)
    print(f"wrote {args.out}")
