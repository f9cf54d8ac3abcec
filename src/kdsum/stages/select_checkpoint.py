"""Choose a system's checkpoint by ROUGE on the dev set's tuning rows.

Choose a system's checkpoint: each candidate (kdsum.training.candidates) summarises the dev set's tuning rows
(kdsum.selection.tuning); the best by ROUGE becomes the system's model.

    kdsum select-checkpoint --spec results/specs/model/M/V.json --evaluation-spec results/specs/evaluation.json \\
        --prompts-dir DIR --references results/data/dev.jsonl --candidates results/train/M/V/candidates \\
        --final-model results/train/M/V/model --log-history results/train/M/V/log_history.csv [--base-dir B] \\
        --out-choice results/selection/M/V/checkpoint.json --out-csv .../checkpoints.csv --plot .../checkpoints.png

Writes the choice (``checkpoint.json``: the chosen candidate's step, its directory under the training outputs
and its hash; ``kdsum predict --checkpoint`` and ``kdsum decode --checkpoint`` load that directory), a table (step, training loss, tuning-row scores, chosen) and a plot of loss
and ROUGE per checkpoint.
"""

from __future__ import annotations

import argparse

import pandas as pd

from kdsum.config.spec import EvaluationArgs, Job, read_spec
from kdsum.gpu import slots as gpu_slots
from kdsum.io import write_csv, write_json
from kdsum.selection.choice import checkpoint_choice
from kdsum.selection.select import checkpoint_table, plot_checkpoints, score_tuning_rows
from kdsum.training.candidates import candidate_models


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum select-checkpoint", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the system's job (results/specs/model/M/V.json)")
    ap.add_argument("--evaluation-spec", required=True, help="results/specs/evaluation.json (tuning_fraction)")
    ap.add_argument("--prompts-dir", required=True)
    ap.add_argument("--references", required=True, help="results/data/dev.jsonl")
    ap.add_argument("--candidates", required=True, help="results/train/M/V/candidates")
    ap.add_argument("--final-model", required=True, help="results/train/M/V/model")
    ap.add_argument("--log-history", required=True, help="results/train/M/V/log_history.csv")
    ap.add_argument("--base-dir")
    ap.add_argument("--token-cache", help="directory of cached morphemes (kdsum.scoring.token_cache)")
    for option in ("--out-choice", "--out-csv", "--plot"):
        ap.add_argument(option, required=True)
    args = ap.parse_args(argv)
    job = read_spec(args.spec, Job)
    evaluation = read_spec(args.evaluation_spec, EvaluationArgs)
    candidates = candidate_models(args.candidates, args.final_model)
    with gpu_slots.claim(1):  # a free device, before torch touches CUDA (kdsum.gpu.slots)
        scores = [
            score_tuning_rows(
                job, evaluation, args.prompts_dir, args.references, path, args.base_dir, token_cache=args.token_cache
            )
            for _, path in candidates
        ]
    history = pd.read_csv(args.log_history)
    df = checkpoint_table([s for s, _ in candidates], scores, history)
    step, path = candidates[int(df.index[df["chosen"]][0])]
    plot_checkpoints(df, history, job.name, args.plot)
    write_csv(args.out_csv, df)
    write_json(args.out_choice, checkpoint_choice(job.name, step, path))
    print(df.to_string(index=False))
    print(f"{job.name}: chose the checkpoint of step {step} ({path}); wrote {args.out_choice}")
