"""Benchmark: the no-op runs, `snakemake -n` and `dvc repro` with nothing to do, on a finished pipeline.

WORKDIR is a checkout whose default pipeline has run to the end under both engines (`dvc repro` then
`kdsum sync-mtimes`, or a Snakemake run then `dvc repro --single-item check_dag`, `dvc commit -f` and `kdsum sync-mtimes`). Each command runs once to
warm the file cache, then N times; the JSON holds every wall time and CPU time (user + sys: less sensitive to a busy machine), their medians, and
the machine's load average.
A run that does not report "nothing to do" fails the benchmark (it would time a real run).

    python benchmarks/bench_noop.py WORKDIR --runs 5 --out results/bench_noop.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

COMMANDS = {
    "snakemake -n": ([sys.executable, "-m", "snakemake", "-n", "results/summary.csv"], "Nothing to be done"),
    "dvc repro": ([sys.executable, "-m", "dvc", "repro"], "Data and pipelines are up to date."),
}


def timed(cmd: list[str], workdir: Path, expect: str) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if proc.returncode != 0 or expect not in proc.stdout + proc.stderr:
        sys.exit(f"`{' '.join(cmd[1:])}` in {workdir} is not a no-op: {(proc.stdout + proc.stderr)[-1500:]}")
    return round(wall, 3), round(cpu, 3)


def measure(workdir: Path, runs: int) -> dict:
    out = {}
    for name, (cmd, expect) in COMMANDS.items():
        timed(cmd, workdir, expect)  # warm-up
        walls, cpus = zip(*(timed(cmd, workdir, expect) for _ in range(runs)), strict=True)
        out[name] = {
            "median_s": statistics.median(walls),
            "median_cpu_s": statistics.median(cpus),
            "runs_s": list(walls),
            "runs_cpu_s": list(cpus),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    load_before = os.getloadavg()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "workdir": str(args.workdir),
        "load_average_before": [round(x, 2) for x in load_before],
        "results": measure(args.workdir, args.runs),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
