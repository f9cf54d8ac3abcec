"""Export a fine-tuned system as one self-contained 16-bit Hugging Face model directory (no peft, no kdsum).

    kdsum export --spec results/specs/model/M/V.json \\
        [--model-dir results/train/M/V/model | --checkpoint results/selection/M/V/checkpoint.json] \\
        [--base-dir results/base/M] [--decoding results/selection/M/V/decoding.json] [--dtype auto] \\
        --out results/export/M/V

The adapter (LoRA, QLoRA) is merged; the directory holds safetensors weights, the tokenizer with its data tokens and
chat template, and a generation config with the job's decoding settings (the decoding search's choice with
--decoding) and end ids. --dtype auto keeps the dtype prediction uses (bfloat16 on a bf16 GPU). What is written:
kdsum.generation.export.
"""

from __future__ import annotations

import argparse
import sys

from kdsum.config.spec import Job, read_spec
from kdsum.generation.export import DTYPES, export_system
from kdsum.gpu import slots as gpu_slots
from kdsum.selection.choice import chosen_model_dir, with_selected_decoding


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="kdsum export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--spec", required=True, help="the job's spec (results/specs/model/M/V.json)")
    model = ap.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", help="the trained model (results/train/M/V/model)")
    model.add_argument("--checkpoint", help="the checkpoint search's choice (results/selection/M/V/checkpoint.json)")
    ap.add_argument("--base-dir", help="the built base model (results/base/M), for a model built offline")
    ap.add_argument("--decoding", help="the decoding search's choice (results/selection/M/V/decoding.json)")
    ap.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="weights' dtype (default: auto)")
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    job = read_spec(args.spec, Job)
    model_dir = chosen_model_dir(job, args.checkpoint) if args.checkpoint else args.model_dir
    if args.decoding:
        job = with_selected_decoding(job, args.decoding)
    with gpu_slots.claim(1):  # a free device, before torch touches CUDA (kdsum.gpu.slots)
        info = export_system(job, args.out, model_dir, args.base_dir, args.dtype)
    print(f"wrote {args.out}: {info['system']} ({info['load_path']}, {info['dtype']})", file=sys.stderr)
