#!/usr/bin/env python
"""QLoRA prediction on the fast path, checked on a GPU after the pipeline trained a QLoRA system
(benchmarks/gpu_pipeline.py): the merge's equivalence, the greedy agreement, and the export.

    python3 benchmarks/gpu_qlora_merge.py --spec results/specs/model/M/V.json --model-dir results/train/M/V/model \\
        --predictions results/predictions/M/V/dev.csv --rows 64 --out $OUT/merge.json

* **merge**: the system (or, with ``--random-adapter-on BASE``, a random adapter of the shipped shape) loaded both ways (kdsum.models.loading.load_for_generation: 4-bit base dequantized + adapter
  merged into a 16-bit model, and 4-bit base + unmerged adapter); next-token logits of each of ``--rows`` dev prompts
  (one prompt a forward, no padding): the largest absolute difference, the largest logit, the share of equal argmax;
  and each path against the fp32 reference (the dequantized weights and the adapter merged in fp32).
* **agreement**: greedy summaries of those rows by each (the merged model on the engine, the 4-bit one through
  ``model.generate``): the share of identical summaries, and each path's seconds.
* **export**: `kdsum export` of the system, then, in a fresh interpreter where peft cannot be imported, the exported
  directory loaded by ``AutoModelForCausalLM.from_pretrained`` summarises every dev row with the pipeline's
  generation code; the share equal to the pipeline's ``--predictions``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EXPORTED = r"""
import json, sys, time
sys.modules["peft"] = None  # the export must load without it
import pandas as pd, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from kdsum.config.spec import Job, read_spec
from kdsum.generation.predict import generate_summaries, read_prompt_rows
out_dir, spec, prompts, predictions = sys.argv[1:5]
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).to("cuda").eval()
tok = AutoTokenizer.from_pretrained(out_dir)
load_s = time.perf_counter() - t0
job = read_spec(spec, Job)
rows = read_prompt_rows(prompts, "causal")
stats = {}
texts = generate_summaries(model, tok, rows, job, progress=False, stats=stats)
expected = pd.read_csv(predictions, keep_default_na=False)["summary"].tolist()
same = sum(a == b for a, b in zip(texts, expected, strict=True))
print(json.dumps({"rows": len(rows), "identical": same, "load_s": load_s, "engine": stats["engine"],
                  "seconds": stats["seconds"], "peft_imported": sys.modules.get("peft") is not None}))
"""


def _plan(merge: bool):
    return lambda source, vocab: {"merge": merge, "reason": "benchmark"}


def reference_model(job, merged):
    """The function both paths compute, in fp32: the 4-bit base dequantized (the same NF4 values), cast to fp32,
    the adapter merged in fp32."""
    from kdsum.models.loading import _attach_adapter, dequantize_base, load_base_model

    base = dequantize_base(load_base_model(job, merged.base, method="qlora", for_training=False)).float()
    return _attach_adapter(base, merged.tokenizer, job, merged.adapter, merged.base, merge=True).eval()


def make_adapter(base: str, out: str) -> None:
    """A LoRA adapter of the shipped shape (r=16, alpha 32, all linear layers) with random, non-zero A and B on
    ``base``: a merge that lost or misplaced it would show (a freshly trained adapter is still near zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def merge_check(job, model_dir: str, rows: list[dict]) -> tuple[dict, object, object]:
    import torch

    from kdsum.models.fitting import encode_rows, input_budget, template_kwargs
    from kdsum.models.loading import load_for_generation

    t0 = time.perf_counter()
    merged = load_for_generation(job, model_dir=model_dir, merge_plan=_plan(True))
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    kept = load_for_generation(job, model_dir=model_dir, merge_plan=_plan(False))
    t2 = time.perf_counter()
    ref = reference_model(job, merged)
    budget = input_budget(job, merged.model)
    encoded, _ = encode_rows(rows, merged.tokenizer, "causal", budget, template_kwargs(job))
    diffs, peaks, same = [], [], 0
    to_ref = {"merged_16bit": [], "4bit_unmerged": []}
    ref_same = {"merged_16bit": 0, "4bit_unmerged": 0}
    with torch.inference_mode():
        for ids in encoded:
            x = torch.tensor([ids], device="cuda")
            a = merged.model(input_ids=x).logits[0, -1].float()
            b = kept.model(input_ids=x).logits[0, -1].float()
            r = ref(input_ids=x).logits[0, -1].float()
            diffs.append((a - b).abs().max().item())
            peaks.append(b.abs().max().item())
            same += int(a.argmax() == b.argmax())
            for name, v in (("merged_16bit", a), ("4bit_unmerged", b)):
                to_ref[name].append((v - r).abs().max().item())
                ref_same[name] += int(v.argmax() == r.argmax())
    del ref
    torch.cuda.empty_cache()
    result = {
        # against the exact function of both paths: fp32 dequantized weights + the adapter merged in fp32
        "fp32_reference_max_abs_diff": {k: max(v) for k, v in to_ref.items()},
        "fp32_reference_median_max_abs_diff": {k: sorted(v)[len(v) // 2] for k, v in to_ref.items()},
        "fp32_reference_argmax_equal": ref_same,
        "load_merged_s": t1 - t0,
        "load_4bit_s": t2 - t1,
        "paths": [merged.load_path, kept.load_path],
        "logit_max_abs_diff": max(diffs),
        "logit_max_abs": max(peaks),
        "logit_diff_median": sorted(diffs)[len(diffs) // 2],
        "next_token_argmax_equal": same,
        "rows": len(rows),
    }
    return result, merged, kept


def agreement(job, merged, kept, rows: list[dict]) -> dict:
    from kdsum.generation.predict import generate_summaries

    s_m, s_k = {}, {}
    a = generate_summaries(merged.model, merged.tokenizer, rows, job, progress=False, stats=s_m)
    b = generate_summaries(kept.model, kept.tokenizer, rows, job, progress=False, stats=s_k)
    return {
        "rows": len(rows),
        "identical": sum(x == y for x, y in zip(a, b, strict=True)),
        "merged_engine": s_m["engine"],
        "merged_seconds": s_m["seconds"],
        "4bit_engine": s_k["engine"],
        "4bit_seconds": s_k["seconds"],
        "examples": [[x, y] for x, y in zip(a[:3], b[:3], strict=True)],
    }


def export_check(args, prompts: Path) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "kdsum", "export", "--spec", args.spec, "--model-dir", args.model_dir]
    r = subprocess.run([*cmd, "--out", args.export_dir], capture_output=True, text=True)
    result = {"export_rc": r.returncode, "export_s": time.perf_counter() - t0, "export_stderr": r.stderr[-800:]}
    if r.returncode:
        return result
    files = sorted(p.name for p in Path(args.export_dir).iterdir())
    run = [sys.executable, "-c", EXPORTED, args.export_dir, args.spec, str(prompts / "dev.jsonl"), args.predictions]
    r = subprocess.run(run, capture_output=True, text=True)
    result.update(files=files, standalone_rc=r.returncode, standalone_stderr=r.stderr[-800:])
    if r.returncode == 0:
        result.update(json.loads(r.stdout.strip().splitlines()[-1]))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--predictions", required=True, help="the pipeline's dev predictions of the system")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--export-dir", default="/tmp/kdsum_export")
    ap.add_argument("--random-adapter-on", help="write a random adapter on this base to --model-dir first")
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.random_adapter_on:
        make_adapter(args.random_adapter_on, args.model_dir)

    from kdsum.config.spec import Job, read_spec
    from kdsum.generation.predict import read_prompt_rows

    job = read_spec(args.spec, Job)
    prompts = ROOT / "results" / "prompts" / job.prompt_set
    rows = read_prompt_rows(prompts / "dev.jsonl", job.family)[: args.rows]
    report: dict = {"spec": args.spec}
    report["merge"], merged, kept = merge_check(job, args.model_dir, rows)
    print(json.dumps(report["merge"]), flush=True)
    if not args.skip_agreement:
        report["agreement"] = agreement(job, merged, kept, rows)
        print(json.dumps(report["agreement"], ensure_ascii=False), flush=True)
    del merged, kept
    import torch

    torch.cuda.empty_cache()
    if not args.skip_export:
        report["export"] = export_check(args, prompts)
        print(json.dumps(report["export"], ensure_ascii=False), flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
