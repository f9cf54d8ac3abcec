"""The one command-line layer: ``kdsum <stage> ...`` (console script) or ``python -m kdsum <stage> ...``.

Each stage is a module ``kdsum.stages.<name>`` with ``main(argv)``, imported only when called, so a stage's code
dependencies are its own module's imports. Errors a user can fix (``KdsumError``, a missing file) print one line
naming the file, row or key and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys

from kdsum.errors import KdsumError

STAGES = {
    "spec": "write one job's resolved spec (results/specs/NAME.json) from the config",
    "ingest": "validate and normalise the raw splits",
    "prompts": "format the prompt dataset of one model family / prompt format",
    "build-base": "build a small base model offline",
    "train": "fine-tune one model under one variant",
    "predict": "summaries of one split by a trained or zero-shot model",
    "baseline": "a non-neural baseline's summaries",
    "submission": "the competition's submission file from test predictions",
    "evaluate": "ROUGE on Kiwi morphemes with bootstrap intervals",
    "decode": "one decoding setting's summaries and score on the dev set's tuning rows",
    "select-decoding": "choose a system's decoding setting on the dev set's tuning rows",
    "select-checkpoint": "choose a system's checkpoint by ROUGE on the dev set's tuning rows",
    "summary": "results/summary.csv, summary.md and plots",
    "compare": "paired bootstrap comparison of two systems",
    "mbr": "an ensemble's summaries: per dialogue, the member summary with the highest mean ROUGE against the others",
    "report-page": "the examples page of the Snakemake report (results/report/examples.html)",
    "replica": "write a hub-shaped local replica of a seed model (real tokenizer, random weights)",
    "dvc-yaml": "write (or --check) dvc.yaml from the Snakemake DAG",
    "sync-mtimes": "make Snakemake accept the results DVC put in place",
}


def stage_module(stage: str) -> str:
    return f"kdsum.stages.{stage.replace('-', '_')}"


def run_stage(stage: str, argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        importlib.import_module(stage_module(stage)).main(argv)
    except KdsumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename or exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        width = max(map(len, STAGES))
        lines = [f"  {name:<{width}}  {text}" for name, text in STAGES.items()]
        print(
            "usage: kdsum STAGE [options]   (kdsum STAGE --help for a stage's options)\n\nstages:\n" + "\n".join(lines),
            file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout,
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown stage '{argv[0]}'", file=sys.stderr)
            sys.exit(2)
        return
    run_stage(argv[0], argv[1:])
