#!/usr/bin/env python
"""Train one (model, variant) job: a full seq2seq fine-tune, or a LoRA / QLoRA adapter for a causal chat model.

Writes, atomically, OUT/model/ (adapter + tokenizer, or the full model + tokenizer), OUT/train_metrics.json and
OUT/log_history.csv. Intermediate checkpoints go to --checkpoint-dir (outside OUT) with a fingerprint of the
settings, base model and prompt data: a rerun with the same fingerprint resumes from the last checkpoint, a
different one starts fresh. The checkpoints are deleted after a successful run unless --keep-checkpoints.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import run_cli  # noqa: E402


def main() -> None:
    import torch

    from kdsum.cli import register_error
    from kdsum.config import load_config, resolve
    from kdsum.modeling import ModelLoadError, model_source
    from kdsum.training import TrainingError, train

    register_error(ModelLoadError)
    register_error(TrainingError)
    from kdsum.memory import MemoryPlanError

    register_error(MemoryPlanError)

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--model", required=True)
    ap.add_argument("--variant", default="default")
    ap.add_argument("--prompts-dir", required=True, help="prompt dataset of the model's family/format (train.jsonl, "
                                                         "special_tokens.json)")
    ap.add_argument("--base", required=True, help="built base model dir (results/base/M), or for hub models the "
                                                  "model's source (hub id or local path)")
    ap.add_argument("--out-dir", required=True, help="results/train/M/V")
    ap.add_argument("--checkpoint-dir", required=True, help="results/checkpoints/M/V (outside the outputs)")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep the checkpoints after success")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = resolve(load_config(args.config), args.model, args.variant)
    source = model_source(spec, args.base) if spec.get("build") else args.base
    metrics = train(spec, source, args.prompts_dir, args.out_dir, args.checkpoint_dir,
                    keep_checkpoints=args.keep_checkpoints, progress=not args.no_progress)
    resumed = f", resumed from step {metrics['resumed_from_step']}" if metrics["resumed_from_step"] else ""
    print(f"trained {args.model}/{args.variant} ({metrics['method_effective']}): {metrics['steps']} steps in "
          f"{metrics['wall_time_s']:.1f}s{resumed}, loss {metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}, "
          f"{metrics['tokens_per_s']:.0f} tokens/s; wrote {args.out_dir}")
    for w in metrics["warnings"]:
        print(f"warning: {w}", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
