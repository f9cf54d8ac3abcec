"""Benchmark: the pipeline's prediction path vs the earlier generation settings, for speed and for quality.

Speed (``speed``, GPU): the Korean dev set (499 dialogues, chat prompts in the pipeline's ``plain`` format) through
a randomly initialised Llama-3.2-3B-shaped model in bf16 (the model directory that ``bench_train.py`` builds, with
a Korean BPE tokenizer of 4,000 entries trained by ``kdsum.models.loading.train_tokenizer`` on the 2,500 Korean training
dialogues: 0.50 tokens per non-space character). Both sides generate exactly ``--new-tokens`` tokens per dialogue:
end-of-sequence is held back with ``min_new_tokens = max_new_tokens`` (a random model would otherwise stop at
random points), so the two do the same amount of decoding.

* ``pipeline``: ``kdsum.generation.predict.generate_summaries`` as ``kdsum predict`` calls it: rows sorted by length
  (longest first), left padding, greedy (``num_beams=1``), ``generation.batch_size`` rows per batch (64, 128, 256).
* ``earlier``: batches of 16 in file order (unsorted, so each batch pads to its longest row), ``num_beams=4``,
  the same prompts, the same token budget, ``model.generate`` directly. Run on the first ``--earlier-batches``
  batches and projected linearly to the 32 batches of the full set (stated as such in the output).

Quality (``quality``, GPU or CPU): ``tiny-llama`` built and trained by the pipeline's own stages on the Korean
``train_subset_2500`` (``--train-steps`` steps), then the dev set generated with both settings (the model's
configured ``max_new_tokens``/``no_repeat_ngram_size`` for both, end-of-sequence enabled) and written as
prediction CSVs; ``score`` (CPU) scores them with ``kdsum evaluate`` (ROUGE-1/2/L F1 on Kiwi morphemes, mean
over references) and a paired bootstrap.

    python benchmarks/bench_generate.py prepare --out .bench
    python benchmarks/bench_generate.py speed --data .bench --out results/bench_generate.json
    python benchmarks/bench_generate.py quality --data .bench --out-dir results/bench_quality
    python benchmarks/bench_generate.py score --pred-dir results/bench_quality --references .bench/ko_data/dev.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local directories only: never wait on the network
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHARED = ROOT.parent / "shared" / "data" / "ko"
VOCAB_KO = 4000
EARLIER = {"batch_size": 16, "num_beams": 4, "sorted": False}


# ============================================================================================ prepare (CPU)
def prepare(out: Path, shared: Path) -> dict:
    """Korean tokenizer + the pipeline's ingested data and chat prompts (train subset and dev) under ``out``."""
    from kdsum.config.catalog import spec_for
    from kdsum.config.resolve import load_config
    from kdsum.data.ingest import ingest_splits
    from kdsum.data.prompts import write_prompt_set
    from kdsum.data.stats import collect_special_tokens
    from kdsum.io import read_jsonl
    from kdsum.models.build import train_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    # the competition's train and dev share near-duplicate dialogues (ingest names 37 pairs): recorded, not refused
    ingest_splits(
        {"train": shared / "train_subset_2500.csv", "dev": shared / "dev.csv"}, out / "ko_data", leakage="report"
    )
    prompt_set = spec_for(load_config(ROOT / "config.yaml"), "prompts/chat-plain")
    write_prompt_set(prompt_set, out / "ko_data", out / "ko_prompts")
    train = read_jsonl(out / "ko_data" / "train.jsonl")
    dev = read_jsonl(out / "ko_data" / "dev.jsonl")
    tokens = collect_special_tokens(train)
    texts = [r["dialogue"] for r in train] + [s for r in train for s in r["summaries"]]
    tok = train_tokenizer(texts, VOCAB_KO, tokens, "causal")
    tok.save_pretrained(out / "tok_ko")
    chars = sum(len(r["dialogue"].replace(" ", "").replace("\n", "")) for r in dev)
    n = sum(len(x) for x in tok([r["dialogue"] for r in dev], add_special_tokens=False)["input_ids"])
    stats = {
        "vocab": len(tok),
        "dev_dialogues": len(dev),
        "tokens_per_char": n / chars,
        "dev_dialogue_tokens_mean": n / len(dev),
    }
    (out / "ko_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


# ============================================================================================ shared helpers
def with_generation(job, **changes):
    """``job`` with some generation settings changed (a Job is frozen)."""
    return dataclasses.replace(job, generation=dataclasses.replace(job.generation, **changes))


def _min_new_tokens_patch():
    """Make kdsum.generation.predict hold back EOS until max_new_tokens (same decode work on both sides)."""
    import kdsum.generation.predict as gen

    original = gen.generation_kwargs

    def patched(job, tokenizer, model):
        kw = original(job, tokenizer, model)
        kw["min_new_tokens"] = kw["max_new_tokens"]
        return kw

    gen.generation_kwargs = patched
    return original


def earlier_generate(
    model,
    tokenizer,
    encoded: list[list[int]],
    kwargs: dict,
    batch_size: int,
    num_beams: int,
    limit_batches: int | None = None,
    sync=None,
) -> tuple[list[str], list[float]]:
    """The earlier settings: batches in input order (unsorted), left padding, beam search."""
    import torch

    from kdsum.generation.predict import decode_new_tokens
    from kdsum.models.fitting import pad_batch

    device = next(model.parameters()).device
    kw = dict(kwargs, num_beams=num_beams)
    outs, times, new = [], [], []
    n_batches = math.ceil(len(encoded) / batch_size)
    for b in range(n_batches if limit_batches is None else min(limit_batches, n_batches)):
        batch = encoded[b * batch_size : (b + 1) * batch_size]
        t0 = time.perf_counter()
        ids, mask = pad_batch(batch, kw["pad_token_id"], "left")
        with torch.inference_mode():
            seq = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
        outs.extend(decode_new_tokens(tokenizer, seq.cpu(), ids.shape[1], "causal"))
        new.append(seq.shape[1] - ids.shape[1])
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    earlier_generate.new_tokens = new
    return outs, times


# ============================================================================================ speed (GPU)
def ko_model_dir(data: Path, work: Path) -> Path:
    """The 3B random model of bench_train (built if missing), seen through the Korean tokenizer."""
    import bench_train
    from transformers import AutoTokenizer

    base = bench_train.make_model_dir("llama-3b", data, work / "models")
    out = work / "models" / "llama-3b-ko"
    if not (out / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        for f in base.iterdir():
            if f.suffix in (".safetensors", ".json") and not f.name.startswith(
                ("tokenizer", "special_tokens", "chat_template")
            ):
                (out / f.name).symlink_to(f)
        tok = AutoTokenizer.from_pretrained(data / "tok_ko")
        en = AutoTokenizer.from_pretrained(base)
        assert (tok.pad_token_id, tok.eos_token_id) == (en.pad_token_id, en.eos_token_id), "special ids differ"
        tok.save_pretrained(out)
    return out


def speed(args) -> dict:
    import torch

    import kdsum.generation.predict as gen
    from kdsum.config.resolve import load_config, resolve
    from kdsum.generation.predict import generate_summaries
    from kdsum.io import read_jsonl
    from kdsum.models.fitting import encode_rows, input_budget
    from kdsum.models.loading import load_for_generation

    data, work = Path(args.data), Path(args.work)
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else None
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "new_tokens": args.new_tokens,
    }
    model_dir = ko_model_dir(data, work) if args.model_dir is None else Path(args.model_dir)
    spec = resolve(load_config(ROOT / "config.yaml"), args.model, "zeroshot")
    spec = dataclasses.replace(
        spec,
        method="lora",  # load the base in bf16 (QLoRA would load it in 4 bits)
        source=str(model_dir),  # the configured hub id's shape, random weights, local
        generation=dataclasses.replace(
            spec.generation,
            max_new_tokens=args.new_tokens,
            num_beams=1,
            no_repeat_ngram_size=0,
            repetition_penalty=1.0,
            block_foreign_scripts=False,
        ),
    )
    t0 = time.perf_counter()
    loaded = load_for_generation(spec)
    model, tok = loaded.model, loaded.tokenizer
    report["load_s"] = time.perf_counter() - t0
    report["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    rows = read_jsonl(data / "ko_prompts" / "dev.jsonl")[: args.limit]
    _min_new_tokens_patch()
    budget = input_budget(spec, model)
    encoded, n_cut = encode_rows(rows, tok, "causal", budget)
    lens = [len(e) for e in encoded]
    report["prompts"] = {
        "n": len(rows),
        "mean_tokens": statistics.fmean(lens),
        "max_tokens": max(lens),
        "truncated": n_cut,
        "budget": budget,
    }
    kwargs = gen.generation_kwargs(spec, tok, model)
    report["generate_kwargs"] = {k: v for k, v in kwargs.items() if k not in ("eos_token_id",)}
    # warm-up: kernels, cuBLAS handles, both decoding modes
    warm = with_generation(spec, batch_size=8, max_new_tokens=4)
    generate_summaries(model, tok, rows[:8], warm, progress=False)
    earlier_generate(model, tok, encoded[:4], dict(kwargs, max_new_tokens=4, min_new_tokens=4), 4, 4, sync=sync)

    runs = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        s = with_generation(spec, batch_size=bs)
        for rep in range(args.repeats):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            stats: dict = {}
            t0 = time.perf_counter()
            generate_summaries(model, tok, rows, s, progress=False, stats=stats)
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "settings": "pipeline",
                    "batch_size": bs,
                    "repeat": rep,
                    "seconds": wall,
                    "generate_seconds": stats.get("generate_seconds"),
                    "engine": stats.get("engine"),
                    "dialogues": len(rows),
                    "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                }
            )
            print(f"pipeline batch {bs}: {wall:.1f}s for {len(rows)} dialogues", flush=True)
    # the pipeline's path with the earlier decoding (beam search): sorting and batching without giving up beams
    for bs in [int(x) for x in args.beam_batch_sizes.split(",") if x]:
        s = with_generation(spec, batch_size=bs, num_beams=EARLIER["num_beams"])
        for rep in range(args.repeats):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            stats = {}
            t0 = time.perf_counter()
            generate_summaries(model, tok, rows, s, progress=False, stats=stats)
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "settings": "pipeline-beams",
                    "batch_size": bs,
                    "num_beams": EARLIER["num_beams"],
                    "repeat": rep,
                    "seconds": wall,
                    "dialogues": len(rows),
                    "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                }
            )
            print(
                f"pipeline {EARLIER['num_beams']} beams, batch {bs}: {wall:.1f}s for {len(rows)} dialogues", flush=True
            )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    _, times = earlier_generate(
        model,
        tok,
        encoded,
        kwargs,
        EARLIER["batch_size"],
        EARLIER["num_beams"],
        limit_batches=args.earlier_batches,
        sync=sync,
    )
    n_batches = math.ceil(len(rows) / EARLIER["batch_size"])
    measured = sum(times)
    projected = statistics.fmean(times) * n_batches
    runs.append(
        {
            "settings": "earlier",
            "batch_size": EARLIER["batch_size"],
            "num_beams": EARLIER["num_beams"],
            "batches_measured": len(times),
            "batches_total": n_batches,
            "batch_seconds": times,
            "seconds_measured": measured,
            "dialogues_measured": min(len(rows), len(times) * 16),
            "seconds_projected_full_set": projected,
            "new_tokens_per_batch": getattr(earlier_generate, "new_tokens", None),
            "peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        }
    )
    print(
        f"earlier: {len(times)} batches in {measured:.1f}s; projected {projected:.1f}s for {n_batches} batches",
        flush=True,
    )
    report["runs"] = runs
    best = {}
    for r in runs:
        if r["settings"] == "pipeline":
            best.setdefault(r["batch_size"], []).append(r["seconds"])
    report["pipeline_median_s"] = {bs: statistics.median(v) for bs, v in best.items()}
    report["speedup_vs_earlier_projected"] = {bs: projected / v for bs, v in report["pipeline_median_s"].items()}
    beams: dict = {}
    for r in runs:
        if r["settings"] == "pipeline-beams":
            beams.setdefault(r["batch_size"], []).append(r["seconds"])
    report["pipeline_beams_median_s"] = {bs: statistics.median(v) for bs, v in beams.items()}
    report["earlier_full_set_measured"] = len(times) == n_batches
    report["speedup_beams_vs_earlier"] = {bs: projected / v for bs, v in report["pipeline_beams_median_s"].items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(
        json.dumps(
            {
                "pipeline_median_s": report["pipeline_median_s"],
                "earlier_s": projected,
                "earlier_full_set_measured": report["earlier_full_set_measured"],
                "speedup": report["speedup_vs_earlier_projected"],
                "pipeline_beams_median_s": report["pipeline_beams_median_s"],
                "speedup_beams": report["speedup_beams_vs_earlier"],
            }
        ),
        flush=True,
    )
    return report


# ============================================================================================ quality
def kdsum_stage(stage: str, *args) -> None:
    """``python -m kdsum STAGE ...`` (the pipeline's own command, as Snakemake and DVC run it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-m", "kdsum", stage, *map(str, args)], check=True, env=env)


def build_and_train_tiny(args, data: Path, work: Path) -> tuple:
    """tiny-llama built and trained by the pipeline's stages (``build-base``, ``train``) with the benchmark's steps;
    returns (job, base dir, train dir, seconds to build, seconds to train)."""
    from kdsum.config.catalog import spec_for
    from kdsum.config.resolve import load_config, resolve
    from kdsum.config.spec import to_json
    from kdsum.io import write_text

    config = load_config(ROOT / "config.yaml")
    base_spec = spec_for(config, "base/tiny-llama")
    if args.pretrain_steps is not None:
        base_spec = dataclasses.replace(
            base_spec, build=dataclasses.replace(base_spec.build, pretrain_steps=args.pretrain_steps)
        )
    job = resolve(config, "tiny-llama", "default")
    job = dataclasses.replace(
        job, build=base_spec.build, train=dataclasses.replace(job.train, max_steps=args.train_steps, save_steps=10**6)
    )
    write_text(work / "specs" / "base.json", to_json(base_spec))
    write_text(work / "specs" / "job.json", to_json(job))
    base, trained = work / "base", work / "train"
    t0 = time.perf_counter()
    if not (base / "config.json").exists():
        kdsum_stage(
            "build-base",
            "--spec",
            work / "specs" / "base.json",
            "--train",
            data / "ko_data" / "train.jsonl",
            "--special-tokens",
            data / "ko_prompts" / "special_tokens.json",
            "--out-dir",
            base,
            "--metrics",
            work / "base.json",
        )
    t1 = time.perf_counter()
    if not (trained / "model").exists():
        kdsum_stage(
            "train",
            "--spec",
            work / "specs" / "job.json",
            "--prompts-dir",
            data / "ko_prompts",
            "--base-dir",
            base,
            "--out-dir",
            trained,
            "--checkpoint-dir",
            work / "ckpt",
            "--no-progress",
        )
    return job, base, trained, t1 - t0, time.perf_counter() - t1


def quality(args) -> dict:
    """Build + train tiny-llama with the pipeline's stages on the Korean train subset, then generate the dev set
    with the pipeline settings and with the earlier settings; write both prediction CSVs."""
    import pandas as pd
    import torch

    from kdsum.generation.predict import generate_summaries, generation_kwargs
    from kdsum.io import read_json, read_jsonl
    from kdsum.models.fitting import encode_rows, input_budget
    from kdsum.models.loading import load_for_generation

    data, out = Path(args.data), Path(args.out_dir)
    work = Path(args.work) / "quality"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "train_steps": args.train_steps,
    }
    spec, base, trained, report["build_s"], report["train_s"] = build_and_train_tiny(args, data, work)
    report["train_metrics"] = {
        k: v
        for k, v in read_json(trained / "train_metrics.json").items()
        if k
        in (
            "steps",
            "first_loss",
            "final_loss",
            "tokens_per_s",
            "wall_time_s",
            "method_effective",
            "peak_memory_gb",
            "versions",
        )
    }
    loaded = load_for_generation(spec, model_dir=trained / "model", base_dir=base)
    model, tok = loaded.model, loaded.tokenizer
    rows = read_jsonl(data / "ko_prompts" / "dev.jsonl")[: args.limit]
    keep = read_json(data / "ko_prompts" / "special_tokens.json")["tokens"]
    sync = torch.cuda.synchronize if torch.cuda.is_available() else None
    settings = {}
    only = set(args.only.split(","))
    # pipeline settings: the configured generation block (greedy), length-sorted, a large batch; and the same
    # path with the earlier decoding (4 beams): sorting and batching keep beam search's outputs
    pipelines = {
        "pipeline": with_generation(spec, batch_size=args.batch_size),
        "pipeline-beams": with_generation(spec, batch_size=args.beam_batch_size, num_beams=EARLIER["num_beams"]),
    }
    for name, pipe in pipelines.items():
        if name not in only:
            continue
        gen_block = dataclasses.asdict(pipe.generation)
        generate_summaries(model, tok, rows[:8], pipe, progress=False, keep_tokens=keep)  # warm-up
        stats: dict = {}
        t0 = time.perf_counter()
        preds = generate_summaries(model, tok, rows, pipe, progress=False, keep_tokens=keep, stats=stats)
        settings[name] = {
            "seconds": time.perf_counter() - t0,
            **{
                k: gen_block[k]
                for k in ("batch_size", "num_beams", "max_new_tokens", "no_repeat_ngram_size", "repetition_penalty")
            },
            "sorted": True,
        }
        pd.DataFrame({"fname": [r["fname"] for r in rows], "summary": preds}).to_csv(
            out / f"{name}.csv", index=False, lineterminator="\n"
        )
        print(name, json.dumps(settings[name]), flush=True)
    if "earlier" not in only:
        report["settings"] = settings
        (out / "quality_run_pipeline.json").write_text(json.dumps(report, indent=1, default=str))
        return report
    # earlier settings: same model and prompts, batch 16, 4 beams, file order
    encoded, _ = encode_rows(rows, tok, "causal", input_budget(spec, model))
    kwargs = generation_kwargs(spec, tok, model)
    t0 = time.perf_counter()
    preds_e, _times = earlier_generate(
        model, tok, encoded, kwargs, EARLIER["batch_size"], EARLIER["num_beams"], sync=sync
    )
    settings["earlier"] = {
        "seconds": time.perf_counter() - t0,
        "batch_size": EARLIER["batch_size"],
        "num_beams": EARLIER["num_beams"],
        "max_new_tokens": kwargs["max_new_tokens"],
        "no_repeat_ngram_size": kwargs["no_repeat_ngram_size"],
        "repetition_penalty": kwargs["repetition_penalty"],
        "sorted": False,
    }
    pd.DataFrame({"fname": [r["fname"] for r in rows], "summary": preds_e}).to_csv(
        out / "earlier.csv", index=False, lineterminator="\n"
    )
    report["settings"] = settings
    (out / "quality_run.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(settings), flush=True)
    return report


def score(args) -> dict:
    """Score pipeline.csv and earlier.csv of --pred-dir with `kdsum evaluate` (mean over references, 1,000
    bootstrap resamples); paired bootstrap of the sums."""
    import pandas as pd

    from kdsum.config.spec import EvaluationArgs, to_json
    from kdsum.io import write_text
    from kdsum.scoring.bootstrap import paired_bootstrap

    pred_dir = Path(args.pred_dir)
    out = {}
    items = {}
    spec = pred_dir / "evaluation_spec.json"
    write_text(spec, to_json(EvaluationArgs(aggregate="mean", bootstrap=1000, seed=0)))
    names = [n for n in ("pipeline", "pipeline-beams", "earlier") if (pred_dir / f"{n}.csv").exists()]
    for name in names:
        js, it = pred_dir / f"scores_{name}.json", pred_dir / f"items_{name}.csv"
        kdsum_stage(
            "evaluate",
            "--spec",
            spec,
            "--predictions",
            pred_dir / f"{name}.csv",
            "--references",
            args.references,
            "--out-json",
            js,
            "--out-items",
            it,
        )
        out[name] = json.loads(js.read_text())
        items[name] = pd.read_csv(it)
    a = items["pipeline"]["rouge_sum"].to_numpy()
    b = items["earlier"]["rouge_sum"].to_numpy()
    # paired_bootstrap(a, b) is about b - a: here pipeline - earlier (p_value: share of resamples <= 0)
    out["paired_bootstrap_pipeline_minus_earlier"] = paired_bootstrap(b, a, n_resamples=1000, seed=0)
    if "pipeline-beams" in items:
        c = items["pipeline-beams"]["rouge_sum"].to_numpy()
        out["paired_bootstrap_pipeline_beams_minus_earlier"] = paired_bootstrap(b, c, n_resamples=1000, seed=0)
        print("paired (pipeline-beams - earlier):", out["paired_bootstrap_pipeline_beams_minus_earlier"])
    (pred_dir / "quality_scores.json").write_text(json.dumps(out, indent=1, default=str))
    for name in names:
        s = out[name]
        print(
            f"{name}: ROUGE-1 {s['rouge1']:.2f} ROUGE-2 {s['rouge2']:.2f} ROUGE-L {s['rougeL']:.2f} "
            f"sum {s['rouge_sum']:.2f} {s['rouge_sum_ci']}"
        )
    print("paired:", out["paired_bootstrap_pipeline_minus_earlier"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", default=".bench")
    p.add_argument("--shared", default=str(SHARED))
    s = sub.add_parser("speed")
    s.add_argument("--data", default=".bench")
    s.add_argument("--work", default="/tmp/kdsum_bench")
    s.add_argument("--model", default="llama-ko-3b", help="config entry whose generation block is used")
    s.add_argument("--model-dir", default=None, help="a model directory (default: the 3B random model)")
    s.add_argument("--new-tokens", type=int, default=100)
    s.add_argument("--batch-sizes", default="64,128,256")
    s.add_argument("--repeats", type=int, default=2)
    s.add_argument("--earlier-batches", type=int, default=None, help="default: all (the full set)")
    s.add_argument("--beam-batch-sizes", default="64", help="pipeline path with 4 beams ('' to skip)")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--out", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--data", default=".bench")
    q.add_argument("--work", default="/tmp/kdsum_bench")
    q.add_argument("--train-steps", type=int, default=600)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--beam-batch-size", type=int, default=32)
    q.add_argument("--only", default="pipeline,pipeline-beams,earlier", help="which settings to generate")
    q.add_argument("--pretrain-steps", type=int, default=None, help="override build.pretrain_steps (smoke tests)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--out-dir", required=True)
    c = sub.add_parser("score")
    c.add_argument("--pred-dir", required=True)
    c.add_argument("--references", default=".bench/ko_data/dev.jsonl")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.cmd == "prepare":
        print(json.dumps(prepare(Path(args.out), Path(args.shared)), indent=1))
    elif args.cmd == "speed":
        speed(args)
    elif args.cmd == "quality":
        quality(args)
    else:
        score(args)


if __name__ == "__main__":
    main()
