"""Benchmark: where greedy decoding's time goes, and what cuts it (GPU).

The 499 Korean dev prompts through the 3B random model of ``bench_generate.py speed`` (same model, tokenizer and
prompts; ``--new-tokens`` tokens per dialogue, end-of-sequence held back where the path allows it), one process:

* ``dynamic-B``: ``kdsum.generation.predict.generate_summaries`` with ``generation.engine: generate`` (``model.generate``,
  DynamicCache), batch B;
* ``fast-B``: ``generate_summaries`` with ``generation.engine: auto`` (the shipped default: kdsum.generation.engine.greedy's static
  cache and CUDA-graph decode step), batch B;
* ``dynamic-B-cudnn``: the same with cuDNN's SDPA allowed (the shipped path excludes it: kdsum.generation.predict);
* ``gqa-B``: SDPA's own grouped-query attention instead of transformers' ``repeat_kv`` copy of the cache;
* ``beams-B``: 4 beams;
* ``fast-beams-B``: 4 beams with ``generation.engine: auto`` (kdsum.generation.engine.beams: the prompt's KV once per prompt,
  the step and its beam bookkeeping in a CUDA graph); where ``beams-B`` ran in the same call, how many of the
  summaries are identical to its;
* ``static-B``: the same with ``cache_implementation="static"`` and ``disable_compile=True`` (a preallocated cache:
  no concatenation per step, no torch.compile warm-up);
* ``continuous``: transformers' continuous batching (``model.generate_batch``: paged KV cache, no padding, CUDA
  graphs), all prompts at once, twice (the first pays the graph capture);
* a ``torch.profiler`` table of 20 decode steps of one dynamic batch;
* ``stage-B`` (``stage-fast-B`` / ``stage-dynamic-B``): the prediction stage's proxy, load + generate, timed whole.

The variants other than ``fast-*`` run with ``engine: generate`` (their ``extra`` settings would send the engine's
check to generate anyway), so each compares against ``model.generate``.

    python benchmarks/bench_decode.py --data .bench --out results/bench_decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=".bench")
    ap.add_argument("--work", default="/tmp/kdsum_bench")
    ap.add_argument("--new-tokens", type=int, default=100)
    ap.add_argument(
        "--only",
        default="dynamic-256,fast-256,fast-512,stage-fast-256,stage-dynamic-256,dynamic-256-cudnn,static-256,"
        "static-512,gqa-256,gqa-static-512,beams-128,fast-beams-128,profile",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    from bench_generate import _min_new_tokens_patch, ko_model_dir, with_generation

    import kdsum.generation.predict as gen
    from kdsum.config.resolve import load_config, resolve
    from kdsum.io import read_jsonl
    from kdsum.models.fitting import encode_rows, input_budget
    from kdsum.models.loading import load_for_generation

    data, work = Path(args.data), Path(args.work)
    spec = resolve(load_config(ROOT / "config.yaml"), "llama-ko-3b", "zeroshot")
    import dataclasses

    spec = dataclasses.replace(
        spec,
        method="lora",
        source=str(ko_model_dir(data, work)),
        generation=dataclasses.replace(spec.generation, max_new_tokens=args.new_tokens, num_beams=1, engine="generate"),
    )
    t_load = time.perf_counter()
    loaded = load_for_generation(spec)
    load_s = time.perf_counter() - t_load
    model, tok = loaded.model, loaded.tokenizer
    rows = read_jsonl(data / "ko_prompts" / "dev.jsonl")
    encoded, _ = encode_rows(rows, tok, "causal", input_budget(spec, model))
    lens = [len(e) for e in encoded]
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(),
        "command": " ".join(sys.argv),
        "prompts": {"n": len(rows), "mean": statistics.fmean(lens), "max": max(lens)},
        "new_tokens": args.new_tokens,
        "load_s": load_s,
        "runs": [],
    }
    base_kwargs = _min_new_tokens_patch()
    patched = gen.generation_kwargs
    extra: dict = {}
    gen.generation_kwargs = lambda job, t, m: {**patched(job, t, m), **extra}
    for engine in ("generate", "auto"):
        warm = with_generation(spec, batch_size=8, max_new_tokens=4, engine=engine)
        gen.generate_summaries(model, tok, rows[:8], warm, progress=False)
    default_backends = gen.SDPA_BACKENDS
    outputs: dict[str, list[str]] = {}

    def timed(name, fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        info = out if isinstance(out, dict) else {}
        torch.cuda.synchronize()
        r = {"name": name, "seconds": time.perf_counter() - t0, "peak_gb": torch.cuda.max_memory_allocated() / 2**30}
        r.update(info)
        report["runs"].append(r)
        print(json.dumps(r), flush=True)

    for name in args.only.split(","):
        try:
            if name == "profile":
                from torch.profiler import ProfilerActivity, profile

                s = with_generation(spec, batch_size=256, max_new_tokens=20)
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    gen.generate_summaries(model, tok, rows[:256], s, progress=False)
                report["profile"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
                print(report["profile"][:6000], flush=True)
            elif name == "profile-fast":  # the engine at batch 512, 20 new tokens; kernels inside the CUDA graph too
                from torch.profiler import ProfilerActivity, profile

                import kdsum.generation.engine.greedy as fd

                fd.ATTENTION = "auto"
                s = with_generation(spec, batch_size=512, max_new_tokens=20, engine="auto")
                gen.generate_summaries(model, tok, rows, s, progress=False)  # capture outside the profile
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    gen.generate_summaries(model, tok, rows, s, progress=False)
                report["profile_fast"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
                print(report["profile_fast"][:8000], flush=True)
            elif name.startswith(("dynamic-", "static-", "gqa-", "beams-")):
                parts = name.split("-")
                bs = int(next(p for p in parts if p.isdigit()))
                extra.clear()
                if "static" in parts:
                    extra.update(cache_implementation="static", disable_compile=True)
                # repeat_kv copies the whole cache per layer and step when a mask is passed: force SDPA's own GQA
                os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1" if "gqa" in parts else "0"
                gen.SDPA_BACKENDS = (*default_backends, "CUDNN_ATTENTION") if "cudnn" in parts else default_backends
                s = with_generation(spec, batch_size=bs, num_beams=4 if "beams" in parts else 1)
                for rep in range(2):
                    out: list = []
                    timed(
                        f"{name}#{rep}",
                        lambda s=s, out=out: out.extend(gen.generate_summaries(model, tok, rows, s, progress=False)),
                    )
                    outputs[name] = out
            elif name.startswith("fast-beams-"):  # kdsum.generation.engine.beams (engine: auto, 4 beams)
                extra.clear()
                gen.SDPA_BACKENDS = default_backends
                os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "0"
                s = with_generation(spec, batch_size=int(name.split("-")[2]), num_beams=4, engine="auto")
                for rep in range(2):
                    out = []
                    stats = {}

                    def run_beams(s=s, out=out, stats=stats):
                        out.extend(gen.generate_summaries(model, tok, rows, s, progress=False, stats=stats))
                        keep = ("engine", "prefill_seconds", "decode_seconds")
                        return {k: stats[k] for k in keep if k in stats}

                    timed(f"{name}#{rep}", run_beams)
                    outputs[name] = out
            elif name.startswith("fast-"):  # the engine (engine: auto), no extra generate() settings
                extra.clear()
                import kdsum.generation.engine.greedy as fd

                fd.ATTENTION = "matmul" if name.endswith("-matmul") else "auto"  # fast-512-matmul: no Triton kernel
                gen.SDPA_BACKENDS = default_backends
                os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "0"
                s = with_generation(spec, batch_size=int(name.split("-")[1]), engine="auto")
                for rep in range(2):
                    out = []
                    stats: dict = {}

                    def run_fast(s=s, out=out, stats=stats):
                        out.extend(gen.generate_summaries(model, tok, rows, s, progress=False, stats=stats))
                        keep = ("engine", "prefill_seconds", "decode_seconds")
                        return {k: stats[k] for k in keep if k in stats}

                    timed(f"{name}#{rep}", run_fast)
                    outputs[name] = out
            elif name.startswith("stage-"):  # the prediction stage's proxy: load the model, then generate
                extra.clear()
                gen.SDPA_BACKENDS = default_backends
                os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "0"
                _, kind, bs = name.split("-")
                s = with_generation(spec, batch_size=int(bs), engine="auto" if kind == "fast" else "generate")

                def stage(s=s):
                    t0 = time.perf_counter()
                    lm = load_for_generation(s)
                    t1 = time.perf_counter()
                    stats: dict = {}
                    gen.generate_summaries(lm.model, lm.tokenizer, rows, s, progress=False, stats=stats)
                    del lm
                    return {"load_s": t1 - t0, "generate_s": time.perf_counter() - t1, "engine": stats["engine"]}

                for rep in range(2):
                    timed(f"{name}#{rep}", stage)
            elif name == "continuous":
                from transformers import GenerationConfig

                kw = base_kwargs(spec, tok, model)
                cfg = GenerationConfig(
                    max_new_tokens=args.new_tokens,
                    do_sample=False,
                    eos_token_id=kw["eos_token_id"],
                    pad_token_id=kw["pad_token_id"],
                )

                def run(cfg=cfg):
                    out = model.generate_batch(inputs=encoded, generation_config=cfg, progress_bar=False)
                    n = [len(o.generated_tokens) for o in out.values()]
                    return {"outputs": len(out), "new_tokens_total": sum(n), "new_tokens_mean": statistics.fmean(n)}

                for rep in range(2):
                    timed(f"continuous#{rep}", run)
        except Exception as exc:  # a variant that fails is recorded, the others still run
            report["runs"].append({"name": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
            print(name, "FAILED", type(exc).__name__, str(exc)[:1500], flush=True)
    # the same summaries whatever the cache or kernel (greedy; 4 beams compared among themselves)
    ref = outputs.get("dynamic-256")
    report["identical_to_dynamic_256"] = {k: v == ref for k, v in outputs.items() if ref and "beams" not in k}
    # bf16 rounds differently per kernel and batch shape, so a random model's flat logits flip some argmaxes: the
    # share of summaries equal to dynamic-256's, to set beside generate's own (dynamic-512 against dynamic-256)
    report["rows_equal_to_dynamic_256"] = {
        k: sum(a == b for a, b in zip(v, ref, strict=True)) / len(ref)
        for k, v in outputs.items()
        if ref and "beams" not in k
    }
    print("rows equal to dynamic-256:", json.dumps(report["rows_equal_to_dynamic_256"]), flush=True)
    if "fast-512" in outputs and "fast-512-matmul" in outputs:  # the Triton kernel against the engine's matmuls
        a, b = outputs["fast-512"], outputs["fast-512-matmul"]
        report["rows_equal_fast_512_kernel_vs_matmul"] = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    # 4 beams: kdsum.generation.engine.beams' summaries against model.generate's of the same batch size (beams-B)
    for k, v in outputs.items():
        ref_beams = outputs.get(k.removeprefix("fast-")) if k.startswith("fast-beams-") else None
        if ref_beams:
            same = sum(a == b for a, b in zip(v, ref_beams, strict=True))
            report.setdefault("beams_rows_identical", {})[k] = {"identical": same, "of": len(ref_beams)}
            print(f"{k}: {same} of {len(ref_beams)} summaries identical to {k.removeprefix('fast-')}", flush=True)
    report["transformers"] = __import__("transformers").__version__
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
