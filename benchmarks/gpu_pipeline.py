"""The pipeline's stages in DAG order on a machine without Snakemake (the GPU box), with the exact commands.

    python benchmarks/gpu_pipeline.py plan --configfile benchmarks/gpu_pipeline.yaml --out .gpu/jobs.json  # here
    python benchmarks/gpu_pipeline.py run --jobs .gpu/jobs.json --out $OUT --skip evaluate,summary        # there

`plan` takes the jobs and shell commands from Snakemake's own DAG of results/summary.csv (kdsum.workflow.dvc), i.e. what
`snakemake -n -p` prints; `run` executes them in that order, one after another, timing each and sampling the GPU's
memory (nvidia-smi) while it runs, and writes timings.json plus every stage log. Stages that need what the GPU box
lacks (Kiwi for scoring) are skipped there and run here on the returned predictions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
from pathlib import Path

SEARCH_RULES = ("decode", "evaluate_decoding", "select_decoding")


def plan(configfile: str, out: str, no_search: bool = False) -> None:
    """``no_search``: leave out the decoding search (its scoring needs Kiwi, which the GPU box lacks); the
    predictions then use the spec's own generation settings (``--decoding`` dropped from their commands)."""
    from kdsum.workflow.dvc import snakemake_jobs

    jobs = [
        {"rule": j.rule, "stage": j.stage, "shell": j.shell, "outputs": j.outputs} for j in snakemake_jobs(configfile)
    ]
    if no_search:
        jobs = [
            dict(j, shell=re.sub(r" --decoding \S+", "", j["shell"])) for j in jobs if j["rule"] not in SEARCH_RULES
        ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(jobs, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {out}: {len(jobs)} jobs: " + ", ".join(j["stage"] for j in jobs))


def _gpu_memory_mib() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return max(int(x) for x in out.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return -1


def _sample_peak(peak: list[int], done: threading.Event) -> None:
    while not done.wait(1.0):
        peak[0] = max(peak[0], _gpu_memory_mib())


def run(jobs_file: str, out: str, skip: set[str]) -> None:
    jobs = json.loads(Path(jobs_file).read_text(encoding="utf-8"))
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = []
    for job in jobs:
        if job["rule"] in skip:
            timings.append({"stage": job["stage"], "skipped": True})
            continue
        peak, done = [0], threading.Event()

        sampler = threading.Thread(target=_sample_peak, args=(peak, done), daemon=True)
        sampler.start()
        # what Snakemake does before a job: the folders of its outputs and log
        log = re.search(r">\s*(\S+)\s+2>&1\s*$", job["shell"])
        for path in [p for paths in job["outputs"].values() for p in paths] + ([log.group(1)] if log else []):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        proc = subprocess.run(job["shell"], shell=True, executable="/bin/bash")
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        timings.append(
            {"stage": job["stage"], "seconds": round(seconds, 2), "rc": proc.returncode, "gpu_memory_peak_mib": peak[0]}
        )
        print(f"{job['stage']}: {seconds:.1f} s, rc {proc.returncode}, GPU memory peak {peak[0]} MiB", flush=True)
        (out_dir / "timings.json").write_text(json.dumps(timings, indent=1), encoding="utf-8")
        if proc.returncode != 0:
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("--configfile", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-decoding-search", action="store_true", help="leave out the decoding search (Kiwi scoring)")
    r = sub.add_parser("run")
    r.add_argument("--jobs", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--skip", default="evaluate,summary")
    args = ap.parse_args()
    if args.cmd == "plan":
        plan(args.configfile, args.out, args.no_decoding_search)
    else:
        run(args.jobs, args.out, set(filter(None, args.skip.split(","))))


if __name__ == "__main__":
    main()
