"""The fast engine (``generation.engine: auto``) against ``model.generate`` (``engine: generate``) on a trained model,
in bf16 and in fp32: the share of identical summaries of each pair and the dev ``final`` of each.

    # on the GPU, while the trained model exists (benchmarks/gpu_trained.yaml):
    python3 benchmarks/bench_engine_agreement.py run --spec results/specs/model/M/V.json \\
        --model-dir results/train/M/V/model --base-dir results/base/M --prompts-dir results/prompts/P \\
        --split dev --out DIR
    # on the CPU machine (Kiwi), with the predictions CSVs of DIR:
    python3 benchmarks/bench_engine_agreement.py score --dir DIR --references results/data/dev.jsonl \\
        --evaluation-spec results/specs/evaluation.json --out docs/bench/engine_agreement.json

``run`` writes the job's spec four times with ``train.bf16`` (the dtype the model is loaded in for generation,
kdsum.models.loading.use_bf16) and ``generation.engine`` changed, and runs the pipeline's own ``kdsum predict`` on
each (DIR/<dtype>_<engine>.csv, DIR/run.json with the wall times and each run's last log line). ``score`` runs
``kdsum evaluate`` on each CSV over every row of the split and compares the pairs. The rule (issue 24): if the
engine's ``final`` ever differs from ``generate``'s by more than ``MAX_FINAL_GAP``, the default moves to
``generate``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

RUNS = [("bf16", "auto"), ("bf16", "generate"), ("fp32", "auto"), ("fp32", "generate")]
PAIRS = [("bf16_auto", "bf16_generate"), ("fp32_auto", "fp32_generate"), ("fp32_generate", "bf16_generate")]
MAX_FINAL_GAP = 0.2


def _spec_variant(spec: dict, dtype: str, engine: str) -> dict:
    return {
        **spec,
        "train": {**spec["train"], "bf16": dtype == "bf16"},
        "generation": {**spec["generation"], "engine": engine},
    }


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads(Path(args.spec).read_text(encoding="utf-8"))
    report = {"spec": args.spec, "model_dir": args.model_dir, "split": args.split, "runs": {}}
    for dtype, engine in RUNS:
        name = f"{dtype}_{engine}"
        spec_path = out / f"spec_{name}.json"
        spec_path.write_text(json.dumps(_spec_variant(spec, dtype, engine), indent=1), encoding="utf-8")
        cmd = [sys.executable, "-m", "kdsum", "predict", "--spec", str(spec_path), "--split", args.split]
        cmd += ["--prompts-dir", args.prompts_dir, "--model-dir", args.model_dir, "--out", str(out / f"{name}.csv")]
        cmd += ["--base-dir", args.base_dir] if args.base_dir else []
        start = time.perf_counter()
        proc = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        report["runs"][name] = {"wall_s": round(time.perf_counter() - start, 1), "rc": proc.returncode}
        report["runs"][name]["log_tail"] = lines[-3:]  # the summary line (dialogues/s, engine) and any warning
        print(name, report["runs"][name], flush=True)
    (out / "run.json").write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")


def _final(csv: Path, args: argparse.Namespace) -> float:
    metrics = csv.with_suffix(".metrics.json")
    cmd = [sys.executable, "-m", "kdsum", "evaluate", "--spec", args.evaluation_spec, "--predictions", str(csv)]
    cmd += ["--references", args.references, "--out-json", str(csv.with_suffix(".scores.json"))]
    cmd += ["--out-items", str(csv.with_suffix(".items.csv")), "--out-metrics", str(metrics)]
    subprocess.run(cmd, check=True)
    return json.loads(metrics.read_text(encoding="utf-8"))["final"]


def identical(a: pd.DataFrame, b: pd.DataFrame) -> tuple[int, int]:
    """Rows (by fname) whose summaries are the same string, and the rows compared."""
    both = a.merge(b, on="fname", suffixes=("_a", "_b"))
    same = (both["summary_a"] == both["summary_b"]).sum()
    return int(same), len(both)


def score(args: argparse.Namespace) -> None:
    src = Path(args.dir)
    frames = {f"{d}_{e}": pd.read_csv(src / f"{d}_{e}.csv", dtype=str, keep_default_na=False) for d, e in RUNS}
    finals = {name: round(_final(src / f"{name}.csv", args), 3) for name in frames}
    pairs = {}
    for a, b in PAIRS:
        same, rows = identical(frames[a], frames[b])
        pairs[f"{a} vs {b}"] = {"identical": same, "rows": rows, "final_gap": round(finals[a] - finals[b], 3)}
    gaps = [abs(pairs[f"{d}_auto vs {d}_generate"]["final_gap"]) for d in ("bf16", "fp32")]
    result = {"final": finals, "pairs": pairs, "max_final_gap": MAX_FINAL_GAP}
    result["default"] = "auto (engine)" if max(gaps) <= MAX_FINAL_GAP else "generate"
    run_json = src / "run.json"
    if run_json.is_file():
        result["run"] = json.loads(run_json.read_text(encoding="utf-8"))
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("final", "pairs", "default")}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="the four predictions (GPU)")
    for flag in ("--spec", "--model-dir", "--prompts-dir", "--out"):
        r.add_argument(flag, required=True)
    r.add_argument("--base-dir")
    r.add_argument("--split", default="dev")
    s = sub.add_parser("score", help="final and identical shares (CPU, Kiwi)")
    for flag in ("--dir", "--references", "--evaluation-spec", "--out"):
        s.add_argument(flag, required=True)
    args = ap.parse_args()
    run(args) if args.cmd == "run" else score(args)


if __name__ == "__main__":
    main()
