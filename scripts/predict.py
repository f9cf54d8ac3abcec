#!/usr/bin/env python
"""Generate one summary per dialogue of a split with a trained (or zero-shot) model.

    python scripts/predict.py --config config.yaml --model M --variant V --split S --prompts-dir DIR \\
        (--model-dir results/train/M/V/model | --base SRC for --variant zeroshot) \\
        --out results/predictions/M/V/S.csv

DIR is the model family's prompt dataset (results/prompts/...): DIR/S.jsonl holds the prompts and
DIR/special_tokens.json the data tokens that foreign-script blocking leaves allowed. --base gives the base model:
required for a zero-shot run of a model built offline (results/base/M); for a fine-tuned LoRA adapter it overrides
the base that the adapter's config names. Writes a CSV ``fname,summary`` in the split's order, whole or not at
all; a progress bar and the speed (dialogues/s) go to stderr. See kdsum.generation for the details.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import register_error, run_cli  # noqa: E402
from kdsum.generation import GenerationError  # noqa: E402
from kdsum.modeling import ModelLoadError  # noqa: E402

register_error(GenerationError)
register_error(ModelLoadError)


def main() -> None:
    import pandas as pd
    import torch

    from kdsum.config import load_config, resolve
    from kdsum.generation import generate_summaries, load_for_generation, read_prompt_rows
    from kdsum.io import atomic_path, read_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--variant", required=True, help="a variant name from config, or 'zeroshot'")
    ap.add_argument("--split", required=True)
    ap.add_argument("--prompts-dir", required=True)
    ap.add_argument("--model-dir", help="the trained model (results/train/M/V/model)")
    ap.add_argument("--base", help="base model directory or hub id (zero-shot; or to override an adapter's base)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice). On a "
                    "shared CPU fewer threads can be much faster: OpenMP threads spin while they wait for a core")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)

    spec = resolve(load_config(args.config), args.model, args.variant)
    prompts_dir = Path(args.prompts_dir)
    rows = read_prompt_rows(prompts_dir / f"{args.split}.jsonl", spec["family"])
    tokens_file = prompts_dir / "special_tokens.json"
    keep_tokens = read_json(tokens_file)["tokens"] if tokens_file.exists() else []

    loaded = load_for_generation(spec, model_dir=args.model_dir, base=args.base)
    stats: dict = {}
    summaries = generate_summaries(loaded.model, loaded.tokenizer, rows, spec, progress=not args.no_progress,
                                   keep_tokens=keep_tokens, stats=stats)
    frame = pd.DataFrame({"fname": [r["fname"] for r in rows], "summary": summaries})
    with atomic_path(args.out) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8", lineterminator="\n")
    empty = sum(1 for s in summaries if not s)
    adapter = f"{loaded.adapter}{' (merged)' if loaded.merged else ''}" if loaded.adapter else "none"
    print(f"{args.model}/{args.variant} {args.split}: {stats['rows']} dialogues in {stats['seconds']:.1f} s "
          f"({stats['dialogues_per_s']:.2f} dialogues/s; {stats['truncated']} inputs cut to "
          f"{stats['input_budget']} tokens; {empty} empty summaries; foreign-script blocking "
          f"{'on' if stats['blocked'] else 'off'}; adapter: {adapter}; device: {loaded.model.device})",
          file=sys.stderr)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
