"""Benchmark: the pipeline's ROUGE scorer (kdsum.scoring.metrics.rouge_scores) vs the naive rouge_score loop.

Data: the DialogSum train summaries (``../shared/data/dialogsum/train.jsonl``, field ``summary``) as
references; the system output is the first utterance of each dialogue with its speaker tag removed (a
lead-1 baseline).  Every path uses the same Kiwi tokenizer, whose model is loaded and warmed up before any
timer starts (its start-up is measured separately, in a fresh process).  Timed, in interleaved rounds so
that a change of load on a shared machine hits every path alike:

* ``naive``: ``RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=KiwiMorphemeTokenizer())
  .score(ref, pred)``, pair by pair;
* ``cold``: ``rouge_scores`` with every text tokenised (Kiwi threads: one per core of this process);
* ``cold_1_thread``: the same with one Kiwi thread (the scaling from 1 to N threads);
* ``cached_refs`` (a what-if, not a pipeline path): the references' tokens read from a JSONL file written
  beforehand (reading it and checking each summary's digest are timed), only the predictions tokenised.

Each path's scores must equal the naive loop's exactly.  Every timing records the 1-minute load average
before it (the machine may be shared) and the CPU time of each thread.  Then the cold path is profiled:
Kiwi's batch alone for each thread count of ``--sweep-threads`` (wall, and CPU per thread: the main thread
converts Kiwi's results into Python tokens, Kiwi's C++ workers analyse) and a cProfile of one call (main
thread only).  With ``--evaluate-job`` it also times ``kdsum evaluate`` (a whole pipeline evaluate job, as a
subprocess, with the settings ``aggregate: mean, bootstrap: 1000, seed: 0``) on the Korean dev split, how long
tokenising that split's references takes (the most a reference-token cache could save per job), and importing
``kdsum.scoring.metrics`` in a fresh interpreter; ``--evaluate-other`` times another checkout's evaluate job (and its
import) alongside: its ``kdsum evaluate``, or, in a checkout from before the stage modules, its
``scripts/evaluate.py`` (whose defaults are those settings).

    python benchmarks/bench_scoring.py --out results/bench_scoring.json [--repeats 5] [--limit N]
        [--sweep-threads 1,2,3,4] [--evaluate-job [--evaluate-other OTHER_CHECKOUT]]

``--korean-dev`` runs another benchmark instead, on the Korean dev split (``../shared/data/ko/dev.csv``, 499 items):
the naive loop against the evaluate stage's own path, ``kdsum.scoring.evaluate.evaluate`` with the pipeline's settings
(bootstrap included), called in this process with Kiwi warm, for one system (no cache; a cache miss; a hit: what
every system of a split after the first gets) and for ``--systems`` N systems sharing the references (system k: the
k-th utterance of each dialogue, ``--turns`` utterances long). Every item of every path must equal the naive loop's
scores exactly, and the outputs with the cache must equal those without. ``--jobs`` also times the N systems as
whole ``kdsum evaluate`` jobs, with and without ``--token-cache``.

    python benchmarks/bench_scoring.py --korean-dev --out /tmp/bench_korean.json [--repeats 3] [--systems 6]
        [--turns 1] [--jobs]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import hashlib
import io
import json
import os
import platform
import pstats
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import date
from itertools import chain, count
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rouge_score.rouge_scorer import RougeScorer  # noqa: E402

from kdsum.config.spec import EvaluationArgs, to_json  # noqa: E402
from kdsum.io import write_json  # noqa: E402
from kdsum.scoring.metrics import ROUGE_KEYS, KiwiMorphemeTokenizer, default_num_workers, rouge_scores  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "dialogsum" / "train.jsonl"
KOREAN_DEV = SHARED / "ko" / "dev.csv"
_SPEAKER_RE = re.compile(r"^\s*#[A-Za-z]+\d*#\s*:\s*")
_PROFILED = (
    "rouge_scores",
    "tokenize_many",
    "_forms",
    "guard_tokens",
    "_pair_scores",
    "_ngram_table",
    "_clipped_overlaps",
    "_lcs_masks",
    "_lcs_with_masks",
)


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


# ------------------------------------------------------------------------------------------------ paths


def naive(preds: list[str], refs: list[str], tok: KiwiMorphemeTokenizer) -> list[tuple[float, ...]]:
    scorer = RougeScorer(list(ROUGE_KEYS), tokenizer=tok)
    out = []
    for p, r in zip(preds, refs, strict=True):
        s = scorer.score(r, p)
        out.append(tuple(s[k].fmeasure for k in ROUGE_KEYS))
    return out


def score_rows(df) -> list[tuple[float, ...]]:
    return list(df[list(ROUGE_KEYS)].itertuples(index=False, name=None))


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def write_reference_tokens(path: Path, refs: list[str], tok: KiwiMorphemeTokenizer) -> None:
    """The what-if cache: one line per reference, its digest and tokens (not timed)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, (text, tokens) in enumerate(zip(refs, tok.tokenize_many(refs), strict=True)):
            fh.write(
                json.dumps({"fname": f"train_{i}", "digest": _digest(text), "tokens": tokens}, ensure_ascii=False)
                + "\n"
            )


def read_reference_tokens(path: Path, refs: list[str]) -> dict[str, list[str]]:
    """text -> tokens from the what-if cache, refusing a line whose digest is not its reference's."""
    known: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for i, (line, text) in enumerate(zip(fh, refs, strict=True)):
            rec = json.loads(line)
            if rec["digest"] != _digest(text):
                raise ValueError(f"{path}: line {i + 1} ({rec['fname']}) was made for another reference text")
            known[text] = rec["tokens"]
    if len(known) != len(set(refs)):
        raise ValueError(f"{path}: {len(known)} cached references for {len(set(refs))} distinct texts")
    return known


class CachedTokens:
    """A tokenizer serving known texts from a dict and sending the rest to Kiwi in one batch."""

    def __init__(self, known: dict[str, list[str]], kiwi: KiwiMorphemeTokenizer) -> None:
        self.known, self.kiwi = known, kiwi

    def tokenize(self, text: str) -> list[str]:
        return self.known[text] if text in self.known else self.kiwi.tokenize(text)

    def tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        todo = [t for t in texts if t not in self.known]
        fresh = dict(zip(todo, self.kiwi.tokenize_many(todo), strict=True))
        return [self.known[t] if t in self.known else fresh[t] for t in texts]


# ------------------------------------------------------------------------------------------------ timing


def _thread_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process (Linux /proc; empty elsewhere)."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _machine_cpu_s() -> tuple[float, float] | None:
    """(CPU seconds all processes of this machine have used, seconds a hypervisor gave the machine's CPUs
    to others: "steal"), from Linux /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fh.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``fn`` once: its result and {wall_s, cpu_s (all threads), main/other thread CPU, load before,
    other_processes_cpu_s: CPU other processes used meanwhile (the machine is shared), steal_s}."""
    gc.collect()
    load_before = [round(x, 2) for x in os.getloadavg()]
    threads_before = _thread_cpu()
    machine_before = _machine_cpu_s()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    machine_after = _machine_cpu_s()
    threads_after = _thread_cpu()
    main = threading.get_native_id()
    deltas = {t: threads_after[t] - threads_before.get(t, 0.0) for t in threads_after}
    other = sorted((round(d, 2) for t, d in deltas.items() if t != main and d > 0.005), reverse=True)
    others = steal = None
    if machine_before is not None and machine_after is not None:
        others = round(max(machine_after[0] - machine_before[0] - cpu, 0.0), 2)
        steal = round(machine_after[1] - machine_before[1], 2)
    return result, {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "main_thread_cpu_s": round(deltas.get(main, 0.0), 2),
        "other_threads_cpu_s": other,
        "load_before": load_before,
        "other_processes_cpu_s": others,
        "steal_s": steal,
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in ("wall_s", "cpu_s")}


def kiwi_startup_s() -> dict[str, float]:
    """Kiwi's model load and first call, in a fresh process (every evaluate job pays it)."""
    code = (
        f"import time; t0 = time.perf_counter(); import sys; sys.path.insert(0, {str(ROOT / 'src')!r}); "
        "from kdsum.scoring.metrics import KiwiMorphemeTokenizer as K; k = K(); k.kiwi; t1 = time.perf_counter(); "
        "k.tokenize('모델 적재와 첫 호출'); t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return {"load_s": round(float(out[0]), 2), "first_call_s": round(float(out[1]), 2)}


def cprofile_cold(preds: list[str], refs: list[str], tok: KiwiMorphemeTokenizer) -> tuple[dict, str]:
    prof = cProfile.Profile()
    prof.enable()
    rouge_scores(preds, [[r] for r in refs], tokenizer=tok)
    prof.disable()
    stats = pstats.Stats(prof)
    cum = {}
    for (file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if name in _PROFILED and "kdsum" in file:
            cum[name] = round(cum.get(name, 0.0) + ct, 3)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    return cum, buf.getvalue()


# ------------------------------------------------------------------------------------------------ evaluate job


#: The settings of the timed evaluate jobs: the pipeline's defaults (and the old scripts/evaluate.py's).
EVALUATION = EvaluationArgs(aggregate="mean", bootstrap=1000, seed=0)


def evaluate_command(checkout: Path, spec: Path, args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command (and environment) of one evaluate job of ``checkout``: its ``kdsum evaluate`` stage, or, in a
    checkout from before the stage modules, its scripts/evaluate.py, whose defaults are ``EVALUATION``."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    if (checkout / "src" / "kdsum" / "stages" / "evaluate.py").exists():
        return [sys.executable, "-m", "kdsum", "evaluate", "--spec", str(spec), *args], env
    return [sys.executable, str(checkout / "scripts" / "evaluate.py"), *args], env


def evaluate_job(checkout: Path, other: Path | None, repeats: int, tok: KiwiMorphemeTokenizer) -> dict:
    """Wall time of whole evaluate jobs on the Korean dev split, and of tokenising its references."""
    import pandas as pd

    dev = pd.read_csv(KOREAN_DEV, keep_default_na=False)
    out: dict[str, Any] = {"data": str(KOREAN_DEV.relative_to(ROOT.parent)), "n": len(dev)}
    with tempfile.TemporaryDirectory() as tmp:
        refs_path, preds_path, spec_path = Path(tmp) / "dev.jsonl", Path(tmp) / "pred.csv", Path(tmp) / "spec.json"
        spec_path.write_text(to_json(EVALUATION), encoding="utf-8")
        with open(refs_path, "w", encoding="utf-8") as fh:
            for r in dev.itertuples():
                fh.write(
                    json.dumps({"fname": r.fname, "dialogue": r.dialogue, "summaries": [r.summary]}, ensure_ascii=False)
                    + "\n"
                )
        pd.DataFrame({"fname": dev["fname"], "summary": [lead_utterance(d) for d in dev["dialogue"]]}).to_csv(
            preds_path, index=False
        )
        checkouts = {"evaluate_job": checkout}
        if other is not None:
            checkouts["evaluate_job_other"] = other
            out["other_checkout"] = str(other)
        runs: dict[str, list] = {k: [] for k in checkouts}
        for _ in range(repeats):
            for key, tree in checkouts.items():
                cmd, env = evaluate_command(
                    tree,
                    spec_path,
                    [
                        "--predictions",
                        str(preds_path),
                        "--references",
                        str(refs_path),
                        "--out-json",
                        f"{tmp}/{key}.json",
                        "--out-items",
                        f"{tmp}/{key}.csv",
                    ],
                )
                load_before = [round(x, 2) for x in os.getloadavg()]
                children_before, machine_before = _children_cpu_s(), _machine_cpu_s()
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, env=env)
                wall = time.perf_counter() - t0
                cpu = _children_cpu_s() - children_before
                machine_after = _machine_cpu_s()
                others = (
                    None
                    if machine_before is None or machine_after is None
                    else round(max(machine_after[0] - machine_before[0] - cpu, 0.0), 2)
                )
                runs[key].append(
                    {
                        "wall_s": round(wall, 3),
                        "cpu_s": round(cpu, 3),
                        "load_before": load_before,
                        "other_processes_cpu_s": others,
                    }
                )
        if other is not None:
            same = all(
                Path(f"{tmp}/evaluate_job.{e}").read_bytes() == Path(f"{tmp}/evaluate_job_other.{e}").read_bytes()
                for e in ("json", "csv")
            )
            out["identical_outputs"] = same
        for key, rs in runs.items():
            out[key] = {
                "runs": rs,
                "median_wall_s": round(statistics.median(r["wall_s"] for r in rs), 3),
                "median_cpu_s": round(statistics.median(r["cpu_s"] for r in rs), 3),
                "other_processes_cpu_s_max": max((r["other_processes_cpu_s"] or 0.0) for r in rs),
            }
    refs = dev["summary"].tolist()
    ref_runs = [timed(lambda: tok.tokenize_many(refs))[1] for _ in range(repeats)]
    out["tokenize_references"] = {"runs": ref_runs, **median_of(ref_runs)}
    trees = {"import_metrics_s": checkout / "src"}
    if other is not None:
        trees["import_metrics_other_s"] = other / "src"
    for key, src in trees.items():  # a fresh interpreter each time: what every evaluate job pays
        code = (
            f"import sys, time; sys.path.insert(0, {str(src)!r}); t0 = time.perf_counter(); import kdsum.scoring.metrics; "
            "print(time.perf_counter() - t0)"
        )
        walls = [
            float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(repeats)
        ]
        out[key] = round(statistics.median(walls), 3)
    return out


# ------------------------------------------------------------------------------------------------ Korean dev, N systems


def utterances(dialogue: str) -> list[str]:
    return [_SPEAKER_RE.sub("", line).strip() for line in dialogue.split("\n") if line.strip()]


def system_predictions(dialogues: list[str], k: int, turns: int) -> list[str]:
    """System ``k`` (0-based): utterances k .. k+turns-1 of each dialogue (wrapping around), speaker tags removed."""
    out = []
    for d in dialogues:
        us = utterances(d) or [""]
        out.append(" ".join(us[(k + j) % len(us)] for j in range(turns)))
    return out


def korean_dev(repeats: int, n_systems: int, turns: int, jobs: bool, tok: KiwiMorphemeTokenizer) -> dict[str, Any]:
    """The naive loop against the evaluate stage's path (``kdsum.scoring.evaluate.evaluate``, in this process, Kiwi
    warm) on the Korean dev split, for one system and for ``n_systems`` systems sharing the references; with
    ``jobs``, also the same N systems as whole ``kdsum evaluate`` jobs (subprocesses) with and without the cache."""
    import pandas as pd

    from kdsum.scoring.evaluate import evaluate

    dev = pd.read_csv(KOREAN_DEV, keep_default_na=False)
    refs = dev["summary"].tolist()
    systems = [system_predictions(dev["dialogue"].tolist(), k, turns) for k in range(n_systems)]
    out: dict[str, Any] = {
        "data": str(KOREAN_DEV.relative_to(ROOT.parent)),
        "n": len(dev),
        "systems": n_systems,
        "system": f"system k: utterances k..k+{turns - 1} of each dialogue, speaker tags removed",
        "mean_chars_references": round(sum(map(len, refs)) / len(refs), 1),
        "mean_chars_predictions": round(sum(map(len, chain(*systems))) / (len(refs) * n_systems), 1),
        "evaluation": dataclasses.asdict(EVALUATION),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        refs_path, spec_path = root / "dev.jsonl", root / "spec.json"
        spec_path.write_text(to_json(EVALUATION), encoding="utf-8")
        with open(refs_path, "w", encoding="utf-8") as fh:
            for r in dev.itertuples():
                fh.write(json.dumps({"fname": r.fname, "summaries": [r.summary]}, ensure_ascii=False) + "\n")
        pred_paths = []
        for k, preds in enumerate(systems):
            pred_paths.append(root / f"system_{k}.csv")
            pd.DataFrame({"fname": dev["fname"], "summary": preds}).to_csv(pred_paths[-1], index=False)
        fresh = count()

        def cache_dir() -> Path:
            return root / f"cache_{next(fresh)}"

        warm = cache_dir()
        evaluate(pred_paths[0], refs_path, token_cache=warm)  # fills it: the hit path's cache

        def run(paths: list[Path], cache: Path | None) -> list[tuple[dict, Any]]:
            return [
                evaluate(p, refs_path, EVALUATION.aggregate, EVALUATION.bootstrap, EVALUATION.seed, None, cache)
                for p in paths
            ]

        paths: dict[str, Callable[[], Any]] = {
            "naive_1": lambda: [naive(systems[0], refs, tok)],
            "evaluate_1_no_cache": lambda: run(pred_paths[:1], None),
            "evaluate_1_cache_miss": lambda: run(pred_paths[:1], cache_dir()),
            "evaluate_1_cache_hit": lambda: run(pred_paths[:1], warm),
            f"naive_{n_systems}": lambda: [naive(p, refs, tok) for p in systems],
            f"evaluate_{n_systems}_no_cache": lambda: run(pred_paths, None),
            f"evaluate_{n_systems}_cache": lambda: run(pred_paths, cache_dir()),  # the first misses, the rest hit
            # the floor of any path making the cached path's Kiwi calls: those calls alone, nothing else (the
            # references once, then each system's distinct predictions, one batch each, on all Kiwi workers)
            f"kiwi_only_{n_systems}": lambda: [
                tok.tokenize_many(list(dict.fromkeys(texts))) for texts in (refs, *systems)
            ],
        }
        runs: dict[str, list[dict]] = {k: [] for k in paths}
        mismatches = dict.fromkeys(paths, 0)
        reference: dict[int, tuple] = {}  # system -> (naive scores x100, evaluate's outputs without the cache)
        for rnd in range(repeats):
            for name, fn in paths.items():
                result, timing = timed(fn)
                runs[name].append(timing)
                print(f"korean round {rnd + 1} {name}: {timing}", flush=True)
                if name.startswith("kiwi_only"):
                    continue
                if name.startswith("naive"):
                    for k, scores in enumerate(result):
                        reference.setdefault(k, ([[100.0 * x for x in row] for row in scores], None))
                    continue
                for k, (summary, items) in enumerate(result):
                    naive_x100, plain = reference[k]
                    got = items[list(ROUGE_KEYS)].to_numpy().tolist()
                    mismatches[name] += sum(a != b for a, b in zip(naive_x100, got, strict=True))
                    if plain is None:
                        reference[k] = (naive_x100, (summary, items))
                    else:  # with or without the cache: the same S.json and I.csv
                        mismatches[name] += int(summary != plain[0] or not items.equals(plain[1]))
        out["identical_to_naive"] = {n: mismatches[n] == 0 for n in paths if n.startswith("evaluate")}
        out["median"] = {name: median_of(rs) for name, rs in runs.items()}
        for n in (1, n_systems):
            base = out["median"][f"naive_{n}"]["wall_s"]
            out[f"speedup_wall_{n}"] = {
                name: round(base / m["wall_s"], 2)
                for name, m in out["median"].items()
                if name.startswith(f"evaluate_{n}_")
            }
        out[f"kiwi_bound_speedup_{n_systems}"] = round(
            out["median"][f"naive_{n_systems}"]["wall_s"] / out["median"][f"kiwi_only_{n_systems}"]["wall_s"], 2
        )
        out["load_before"] = {name: [r["load_before"][0] for r in rs] for name, rs in runs.items()}
        out["other_processes_cpu_s_max"] = {
            n: max(r["other_processes_cpu_s"] or 0.0 for r in rs) for n, rs in runs.items()
        }
        out["runs"] = runs
        if jobs:
            out["jobs"] = korean_jobs(root, pred_paths, refs_path, spec_path, repeats)
    if any(mismatches.values()):
        out["mismatches"] = mismatches
    return out


def korean_jobs(root: Path, pred_paths: list[Path], refs_path: Path, spec_path: Path, repeats: int) -> dict:
    """The N systems as whole ``kdsum evaluate`` jobs, one after another (each pays its start-up and Kiwi's)."""
    runs: dict[str, list[float]] = {"jobs_no_cache": [], "jobs_cache": []}
    for rnd in range(repeats):
        for name in runs:
            extra = ["--token-cache", str(root / f"jobs_cache_{rnd}")] if name == "jobs_cache" else []
            t0 = time.perf_counter()
            for k, pred in enumerate(pred_paths):
                cmd, env = evaluate_command(
                    ROOT,
                    spec_path,
                    [
                        "--predictions",
                        str(pred),
                        "--references",
                        str(refs_path),
                        "--out-json",
                        str(root / f"{name}_{k}.json"),
                        "--out-items",
                        str(root / f"{name}_{k}.csv"),
                        *extra,
                    ],
                )
                subprocess.run(cmd, check=True, capture_output=True, env=env)
            runs[name].append(round(time.perf_counter() - t0, 3))
            print(f"korean jobs round {rnd + 1} {name}: {runs[name][-1]} s", flush=True)
    same = all(
        (root / f"jobs_cache_{k}.{e}").read_bytes() == (root / f"jobs_no_cache_{k}.{e}").read_bytes()
        for k in range(len(pred_paths))
        for e in ("json", "csv")
    )
    return {
        "runs_wall_s": runs,
        "median_wall_s": {k: round(statistics.median(v), 3) for k, v in runs.items()},
        "identical_outputs": same,
    }


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DialogSum train.jsonl")
    ap.add_argument("--out", type=Path, required=True, help="JSON result path")
    ap.add_argument("--limit", type=int, default=None, help="first N records only (quick run)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (medians are reported); >= 3")
    ap.add_argument("--num-workers", type=int, default=None, help="Kiwi threads (default: cores of this process)")
    ap.add_argument(
        "--sweep-threads",
        type=lambda v: [int(x) for x in v.split(",")],
        default=None,
        help="Kiwi thread counts for the batch-alone profile, e.g. 1,2,3,4 (default: 1 and all cores)",
    )
    ap.add_argument("--evaluate-job", action="store_true", help="also time `kdsum evaluate` on the Korean dev split")
    ap.add_argument(
        "--evaluate-other",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="with --evaluate-job: another checkout (its root) whose evaluate job to time alongside",
    )
    ap.add_argument(
        "--korean-dev",
        action="store_true",
        help="instead: the naive loop vs the evaluate stage's path on the Korean dev split, 1 and --systems systems",
    )
    ap.add_argument("--systems", type=int, default=6, help="with --korean-dev: systems sharing the references")
    ap.add_argument("--turns", type=int, default=1, help="with --korean-dev: utterances per prediction")
    ap.add_argument("--jobs", action="store_true", help="with --korean-dev: also time whole `kdsum evaluate` jobs")
    args = ap.parse_args(argv)
    if args.korean_dev:
        return main_korean(args, argv)
    if not args.data.exists():
        print(f"error: data not found: {args.data}", file=sys.stderr)
        return 2
    if args.repeats < 3:
        print("error: --repeats must be >= 3", file=sys.stderr)
        return 2
    if args.evaluate_job and not KOREAN_DEV.exists():
        print(f"error: --evaluate-job needs {KOREAN_DEV}", file=sys.stderr)
        return 2

    if args.sweep_threads is None:
        args.sweep_threads = sorted({1, default_num_workers()})
    if min(args.sweep_threads) < 1:
        print("error: --sweep-threads takes counts >= 1", file=sys.stderr)
        return 2

    preds, refs = load(args.data, args.limit)
    startup = kiwi_startup_s()
    tok = KiwiMorphemeTokenizer(num_workers=args.num_workers)
    one_thread = KiwiMorphemeTokenizer(num_workers=1)
    for t in (tok, one_thread):  # model load and first calls, shared by every path, before any timer
        t.tokenize("모델 적재와 첫 호출 준비 warm-up")
        t.tokenize_many(["모델 적재와 첫 호출 준비 warm-up"] * 8)

    distinct = list(dict.fromkeys([*preds, *refs]))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ref_tokens.jsonl"
        write_reference_tokens(cache, refs, tok)
        paths: dict[str, Callable[[], list[tuple[float, ...]]]] = {
            "naive": lambda: naive(preds, refs, tok),
            "cold": lambda: score_rows(rouge_scores(preds, [[r] for r in refs], tokenizer=tok)),
            "cold_1_thread": lambda: score_rows(rouge_scores(preds, [[r] for r in refs], tokenizer=one_thread)),
            "cached_refs": lambda: score_rows(
                rouge_scores(
                    preds, [[r] for r in refs], tokenizer=CachedTokens(read_reference_tokens(cache, refs), tok)
                )
            ),
        }
        runs: dict[str, list[dict]] = {k: [] for k in paths}
        outputs: dict[str, list[tuple[float, ...]]] = {}
        mismatches = {name: 0 for name in paths}  # items differing from the naive loop, over all rounds
        for rnd in range(args.repeats):
            for name, fn in paths.items():  # naive first: every other path is checked against its round
                result, run = timed(fn)
                runs[name].append(run)
                outputs[name] = result
                mismatches[name] += sum(a != b for a, b in zip(outputs["naive"], result, strict=True))
                print(f"round {rnd + 1} {name}: {run}", flush=True)
    if any(mismatches.values()):
        print(f"error: items differing from the naive loop: {mismatches}", file=sys.stderr)
        return 1

    # Where the cold path's time goes: Kiwi's batch alone (as rouge_scores runs it, GC paused), by thread,
    # for each thread count of the sweep.
    sweep = {n: KiwiMorphemeTokenizer(num_workers=n) for n in args.sweep_threads}
    for t in sweep.values():
        t.tokenize_many(["모델 적재와 첫 호출 준비 warm-up"] * 8)
    kiwi_batch: dict[str, list[dict]] = {f"threads_{n}": [] for n in sweep}
    gc.disable()
    try:
        for _ in range(args.repeats):
            for n, t in sweep.items():
                kiwi_batch[f"threads_{n}"].append(timed(lambda t=t: t.tokenize_many(distinct))[1])
    finally:
        gc.enable()
    cum, top = cprofile_cold(preds, refs, tok)
    print(top)

    medians = {name: median_of(rs) for name, rs in runs.items()}
    naive_wall, naive_cpu = medians["naive"]["wall_s"], medians["naive"]["cpu_s"]
    import kiwipiepy

    means = [sum(x[k] for x in outputs["cold"]) / len(preds) * 100 for k in range(3)]
    result: dict[str, Any] = {
        "date": date.today().isoformat(),
        "n_pairs": len(preds),
        "n_distinct_texts": len(distinct),
        "n_distinct_predictions": len(set(preds)),
        "n_distinct_references": len(set(refs)),
        "chars_predictions": sum(map(len, set(preds))),
        "chars_references": sum(map(len, set(refs))),
        "repeats": args.repeats,
        "kiwi_threads": tok.num_workers,
        "cores_available": default_num_workers(),
        "kiwi_startup": startup,
        "median": medians,
        "speedup_wall": {n: round(naive_wall / m["wall_s"], 2) for n, m in medians.items() if n != "naive"},
        "speedup_cpu": {n: round(naive_cpu / m["cpu_s"], 2) for n, m in medians.items() if n != "naive"},
        "cores_used": {n: round(m["cpu_s"] / m["wall_s"], 2) for n, m in medians.items()},
        "other_processes_cpu_s_max": {
            n: max((r["other_processes_cpu_s"] or 0.0) for r in rs) for n, rs in runs.items()
        },
        "steal_s_max": {n: max((r["steal_s"] or 0.0) for r in rs) for n, rs in runs.items()},
        "identical_to_naive": {n: mismatches[n] == 0 for n in paths if n != "naive"},
        "runs": runs,
        "profile_cold": {
            "kiwi_batch": {k: {"runs": v, **median_of(v)} for k, v in kiwi_batch.items()},
            "cprofile_cumulative_s": cum,
            "cprofile_top_tottime": top.strip().splitlines(),
            "cprofile_note": "cProfile sees the main thread only and inflates Python-call-heavy code",
        },
        "scores_x100": {
            **dict(zip(ROUGE_KEYS, (round(m, 4) for m in means), strict=True)),
            "rouge_sum": round(sum(means), 4),
        },
        "tokenizer": tok.name,
        "python": platform.python_version(),
        "kiwipiepy": kiwipiepy.__version__,
        "machine": platform.platform(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
    }
    if args.evaluate_job:
        result["evaluate_job"] = evaluate_job(ROOT, args.evaluate_other, args.repeats, tok)
    write_json(args.out, result)

    print(
        f"{len(preds)} pairs, {len(distinct)} distinct texts, {args.repeats} rounds, medians "
        f"(Kiwi threads {tok.num_workers} of {default_num_workers()} cores; Kiwi start-up "
        f"{startup['load_s']} + {startup['first_call_s']} s excluded):"
    )
    for name, m in medians.items():
        extra = (
            ""
            if name == "naive"
            else (
                f"  speedup {result['speedup_wall'][name]}x wall, {result['speedup_cpu'][name]}x CPU, identical scores"
            )
        )
        print(
            f"  {name:14s} wall {m['wall_s']:.2f} s  CPU {m['cpu_s']:.2f} s{extra}  "
            f"(during a run, at most: other processes {result['other_processes_cpu_s_max'][name]} CPU s, "
            f"steal {result['steal_s_max'][name]} s)"
        )
    for k, v in result["profile_cold"]["kiwi_batch"].items():
        print(
            f"  Kiwi batch alone, {k}: wall {v['wall_s']:.2f} s, CPU {v['cpu_s']:.2f} s "
            f"(last run: main thread {v['runs'][-1]['main_thread_cpu_s']} s, others {v['runs'][-1]['other_threads_cpu_s']})"
        )
    print(f"  cProfile cumulative (s): {cum}")
    if args.evaluate_job:
        ej = result["evaluate_job"]
        print(
            f"  evaluate job on {ej['data']} ({ej['n']} items): median wall {ej['evaluate_job']['median_wall_s']} s"
            + (
                f", other script {ej['evaluate_job_other']['median_wall_s']} s, identical outputs "
                f"{ej['identical_outputs']}"
                if "evaluate_job_other" in ej
                else ""
            )
            + f"; tokenising its references {ej['tokenize_references']['wall_s']} s; importing kdsum.scoring.metrics "
            f"{ej['import_metrics_s']} s"
            + (f" (other tree {ej['import_metrics_other_s']} s)" if "import_metrics_other_s" in ej else "")
        )
    print(f"ROUGE x100: {result['scores_x100']}")
    return 0


def main_korean(args: argparse.Namespace, argv: list[str] | None) -> int:
    if not KOREAN_DEV.exists():
        print(f"error: --korean-dev needs {KOREAN_DEV}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.systems < 1 or args.turns < 1:
        print("error: --repeats, --systems and --turns must be >= 1", file=sys.stderr)
        return 2
    import kiwipiepy

    startup = kiwi_startup_s()
    tok = KiwiMorphemeTokenizer(num_workers=args.num_workers)
    tok.tokenize("모델 적재와 첫 호출 준비 warm-up")
    tok.tokenize_many(["모델 적재와 첫 호출 준비 warm-up"] * 8)
    result = {
        "date": date.today().isoformat(),
        "korean_dev": korean_dev(args.repeats, args.systems, args.turns, args.jobs, tok),
        "repeats": args.repeats,
        "kiwi_threads": tok.num_workers,
        "cores_available": default_num_workers(),
        "kiwi_startup": startup,
        "tokenizer": tok.name,
        "python": platform.python_version(),
        "kiwipiepy": kiwipiepy.__version__,
        "machine": platform.platform(),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
    }
    write_json(args.out, result)
    kd = result["korean_dev"]
    print(f"Korean dev, {kd['n']} items, {kd['systems']} systems, medians of {args.repeats} (Kiwi warm):")
    for name, m in kd["median"].items():
        print(f"  {name:26s} wall {m['wall_s']:.2f} s  CPU {m['cpu_s']:.2f} s")
    print(f"  speedups (wall): {kd['speedup_wall_1']} {kd['speedup_wall_' + str(kd['systems'])]}")
    print(f"  identical to the naive loop: {kd['identical_to_naive']}")
    n = kd["systems"]
    print(
        f"  the cached path's Kiwi calls alone: {kd['median'][f'kiwi_only_{n}']['wall_s']} s, at most "
        f"{kd[f'kiwi_bound_speedup_{n}']}x the naive loop for any path that makes them"
    )
    if "jobs" in kd:
        print(f"  whole jobs: {kd['jobs']['median_wall_s']} identical outputs {kd['jobs']['identical_outputs']}")
    return 1 if "mismatches" in kd else 0


if __name__ == "__main__":
    sys.exit(main())
