"""One setting of the decoding search: summaries of the dev set's tuning rows.

    kdsum decode --spec results/specs/decode/M/V/S.json --evaluation-spec results/specs/evaluation.json \\
        --prompts-dir DIR --references results/data/dev.jsonl [--model-dir D | --checkpoint C] [--base-dir B] \\
        --out-predictions results/selection/M/V/decoding/S/tuning.csv

The spec is the system's job with the setting's generation overrides (``decoding.grid.S``); the model is the
one the system's predictions use (where ``train.select_checkpoints`` is set, the candidate that
``checkpoint.json`` names: ``--checkpoint``). The rule
``evaluate_decoding`` scores the file (``kdsum evaluate --part tuning``), so a change of the scorer reruns that
score, not this generation; ``kdsum select-decoding`` reads the scores.
"""

from __future__ import annotations

import argparse

from kdsum.config.spec import EvaluationArgs, Job, read_spec
from kdsum.gpu import slots as gpu_slots
from kdsum.selection.choice import chosen_model_dir, predict_tuning_rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum decode", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the setting's job (results/specs/decode/M/V/S.json)")
    ap.add_argument("--evaluation-spec", required=True, help="results/specs/evaluation.json (tuning_fraction)")
    ap.add_argument("--prompts-dir", required=True)
    ap.add_argument("--references", required=True, help="results/data/dev.jsonl (which rows are tuning rows)")
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--model-dir")
    model.add_argument("--checkpoint", help="the checkpoint search's choice (results/selection/M/V/checkpoint.json)")
    ap.add_argument("--base-dir")
    ap.add_argument("--out-predictions", required=True)
    args = ap.parse_args(argv)
    job = read_spec(args.spec, Job)
    evaluation = read_spec(args.evaluation_spec, EvaluationArgs)
    model_dir = chosen_model_dir(job, args.checkpoint) if args.checkpoint else args.model_dir
    with gpu_slots.claim(1):  # a free device, before torch touches CUDA (kdsum.gpu.slots)
        n = predict_tuning_rows(
            job, evaluation, args.prompts_dir, args.references, model_dir, args.base_dir, args.out_predictions
        )
    print(f"{job.name}: {n} dev tuning rows summarised; wrote {args.out_predictions}")
