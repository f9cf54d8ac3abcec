"""Benchmark: batched ROUGE (kdsum.metrics.rouge_scores) vs the naive rouge_score loop.

Data: the DialogSum train summaries (``../shared/data/dialogsum/train.jsonl``, field
``summary``) as references; the system output is the first utterance of each dialogue with
its speaker tag removed (a lead-1 baseline).  Both paths use the same Kiwi tokenizer, whose
model is loaded and warmed up before either timer starts; the scores must be identical.

    python benchmarks/bench_scoring.py --out results/bench_scoring.json [--limit N]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rouge_score.rouge_scorer import RougeScorer  # noqa: E402

from kdsum.io import write_json  # noqa: E402
from kdsum.metrics import ROUGE_KEYS, KiwiMorphemeTokenizer, rouge_scores  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dialogsum" / "train.jsonl"
_SPEAKER_RE = re.compile(r"^\s*#[A-Za-z]+\d*#\s*:\s*")


def lead_utterance(dialogue: str) -> str:
    """First utterance of a dialogue without its ``#PersonN#:`` tag."""
    first = next((line for line in dialogue.split("\n") if line.strip()), "")
    return _SPEAKER_RE.sub("", first).strip()


def load(path: Path, limit: int | None) -> tuple[list[str], list[str]]:
    refs: list[str] = []
    preds: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            refs.append(rec["summary"])
            preds.append(lead_utterance(rec["dialogue"]))
            if limit is not None and len(refs) >= limit:
                break
    return preds, refs


def naive(preds: list[str], refs: list[str], tok: KiwiMorphemeTokenizer) -> list[tuple[float, ...]]:
    scorer = RougeScorer(list(ROUGE_KEYS), tokenizer=tok)
    out = []
    for p, r in zip(preds, refs):
        s = scorer.score(r, p)
        out.append(tuple(s[k].fmeasure for k in ROUGE_KEYS))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DialogSum train.jsonl")
    ap.add_argument("--out", type=Path, required=True, help="JSON result path")
    ap.add_argument("--limit", type=int, default=None, help="first N records only (quick run)")
    ap.add_argument("--num-workers", type=int, default=-1, help="Kiwi threads (-1: all cores)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of our path")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"error: data not found: {args.data}", file=sys.stderr)
        return 2

    preds, refs = load(args.data, args.limit)
    tok = KiwiMorphemeTokenizer(num_workers=args.num_workers)
    t0 = time.perf_counter()
    tok.tokenize("모델 적재와 첫 호출 준비 warm-up")  # load + first-call warm-up, shared by both
    warmup_s = time.perf_counter() - t0

    load_before = [round(x, 2) for x in os.getloadavg()]
    # Wall time is what a user waits; CPU time (all threads of this process) is less
    # sensitive to other jobs on a shared machine, but hides the gain of Kiwi's threads.
    t0, c0 = time.perf_counter(), time.process_time()
    slow = naive(preds, refs, tok)
    naive_s, naive_cpu = time.perf_counter() - t0, time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    df = rouge_scores(preds, [[r] for r in refs], tokenizer=tok)
    ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0

    fast = list(df[list(ROUGE_KEYS)].itertuples(index=False, name=None))
    mismatches = sum(a != b for a, b in zip(slow, fast))
    if mismatches:
        print(f"error: {mismatches} of {len(fast)} items differ between naive and batched", file=sys.stderr)
        return 1

    # Where the time goes: Kiwi alone, as each path uses it.  Kiwi's analysis is shared by
    # both paths, so naive_s / kiwi_batch_s bounds the speedup any scorer can reach.
    distinct = list(dict.fromkeys([*preds, *refs]))
    t0 = time.perf_counter()
    tok.tokenize_many(distinct)
    kiwi_batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for p, r in zip(preds, refs):
        tok.tokenize(r)
        tok.tokenize(p)
    kiwi_serial_s = time.perf_counter() - t0

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        rouge_scores(preds, [[r] for r in refs], tokenizer=tok)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        print(buf.getvalue())

    means = {k: float(df[k].mean() * 100) for k in ROUGE_KEYS}
    result = {
        "n_pairs": len(preds),
        "naive_s": round(naive_s, 3),
        "ours_s": round(ours_s, 3),
        "speedup": round(naive_s / ours_s, 2),
        "naive_cpu_s": round(naive_cpu, 3),
        "ours_cpu_s": round(ours_cpu, 3),
        "speedup_cpu": round(naive_cpu / ours_cpu, 2),
        "warmup_s": round(warmup_s, 3),
        "kiwi_serial_s": round(kiwi_serial_s, 3),
        "kiwi_batch_s": round(kiwi_batch_s, 3),
        "n_distinct_texts": len(distinct),
        "speedup_bound": round(naive_s / kiwi_batch_s, 2),
        "identical": True,
        "scores_x100": {**{k: round(v, 4) for k, v in means.items()}, "rouge_sum": round(sum(means.values()), 4)},
        "tokenizer": tok.name,
        "num_workers": args.num_workers,
        "cpu_count": os.cpu_count(),
        "load_avg_before": load_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "machine": platform.platform(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
    }
    write_json(args.out, result)
    print(
        f"{len(preds)} pairs: naive {naive_s:.2f} s, ours {ours_s:.2f} s, "
        f"speedup {naive_s / ours_s:.2f}x (identical scores; Kiwi warm-up {warmup_s:.2f} s excluded)"
    )
    print(f"CPU time: naive {naive_cpu:.2f} s, ours {ours_cpu:.2f} s, ratio {naive_cpu / ours_cpu:.2f}x; "
          f"load average before {load_before}")
    print(
        f"Kiwi alone: {kiwi_serial_s:.2f} s pair by pair (naive's share), {kiwi_batch_s:.2f} s batched "
        f"over {len(distinct)} distinct texts -> speedup bound {naive_s / kiwi_batch_s:.2f}x"
    )
    print(f"ROUGE x100: {result['scores_x100']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
