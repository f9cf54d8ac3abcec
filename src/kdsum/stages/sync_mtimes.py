"""Make Snakemake accept the results DVC put in place (after dvc pull, checkout or repro).

Run after `dvc pull`, `dvc checkout`, `dvc exp apply` or `dvc repro`, before the next `snakemake`.

Why: Snakemake decides what to rerun from file modification times (and its own records of code and inputs);
DVC decides from content hashes. `dvc pull`/`dvc checkout` restore files with fresh mtimes in no particular
order (treeverse/dvc#8602), and `dvc repro` skips a stage whose inputs came out byte-identical, leaving its
outputs older than those inputs. Snakemake would then rebuild results that are already correct.

What it does:
1. `dvc status dvc.yaml --json` must report nothing: DVC has then checked, by hash, that every output of the
   pipeline in the workspace matches its stage's deps, params and command (not the exports of export/dvc.yaml:
   they are not in Snakemake's target, and one not run yet is no change). Otherwise it refuses (exit 1) and names
   the stages, because marking those outputs up to date would hide a real change: run `dvc repro` (or `dvc pull`)
   first.
2. `snakemake --touch --forceall results/summary.csv`: Snakemake marks every output up to date in DAG order and
   records its metadata (code, inputs) for them, without running anything. Every output, not only the ones it
   would rerun: an output older than an input it does not rerun (same checksum) still costs each later plan a
   checksum of that input.
3. `snakemake --dry-run` must then plan no job (exit 1 otherwise, with its plan).
Until it succeeds, the workflow refuses to plan on results DVC changed (kdsum.workflow.specs.unsynced).

    kdsum sync-mtimes                 # config file: the one dvc.yaml was generated for
    kdsum sync-mtimes --configfile my.yaml --target results/summary.csv
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from kdsum.errors import KdsumError
from kdsum.workflow.specs import SYNC_STAMP

NOTHING_TO_DO = "Nothing to be done"


class SyncError(KdsumError):
    """The workspace is not what DVC recorded, or Snakemake still plans jobs."""


def dvc_config_file(dvc_yaml: Path) -> str:
    """The params file named by dvc.yaml's stages: the config file it was generated for."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    files = {
        key for st in stages.values() for entry in st.get("params", []) if isinstance(entry, dict) for key in entry
    }
    if len(files) != 1:
        raise SyncError(f"{dvc_yaml} names {len(files)} params files ({', '.join(sorted(files))}); pass --configfile")
    return files.pop()


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SyncError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-3000:]}")
    return proc


def stamp(synced: bool) -> None:
    """Record (or withdraw) that Snakemake's records match dvc.lock."""
    path = Path(SYNC_STAMP)
    if synced:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    else:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum sync-mtimes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configfile", help="Snakemake config file (default: the params file of dvc.yaml)")
    ap.add_argument("--target", default="results/summary.csv")
    ap.add_argument("--dvc-yaml", default="dvc.yaml")
    ap.add_argument(
        "--force",
        action="store_true",
        help="skip the `dvc status` check (only when you know the workspace outputs are current)",
    )
    args = ap.parse_args(argv)
    config = args.configfile or dvc_config_file(Path(args.dvc_yaml))

    if not args.force:
        status = json.loads(run([sys.executable, "-m", "dvc", "status", args.dvc_yaml, "--json"]).stdout or "{}")
        if status:
            for name, changes in status.items():
                print(f"  {name}: {json.dumps(changes, ensure_ascii=False)}", file=sys.stderr)
            raise SyncError(
                f"`dvc status {args.dvc_yaml}` is not clean, so the workspace is not what dvc.lock records; run "
                f"`dvc repro` (or `dvc pull`/`dvc checkout`) first ({len(status)} stage(s) above)"
            )
        print("dvc status: clean (every output matches dvc.lock by hash)")

    smk = [sys.executable, "-m", "snakemake", args.target, "--cores", "1"]
    stamp(True)  # before Snakemake loads the workflow, whose guard would stop it
    try:
        touched = run(smk + ["--touch", "--forceall", "--configfile", config])
    except SyncError:
        stamp(False)
        raise
    total = re.search(r"^total\s+(\d+)", touched.stdout + touched.stderr, re.M)
    print(f"snakemake --touch: marked the outputs of {total.group(1) if total else 0} job(s) up to date")
    dry = run(smk + ["--dry-run", "--configfile", config], check=False)
    if dry.returncode != 0 or NOTHING_TO_DO not in dry.stdout + dry.stderr:
        print(f"{dry.stdout[-4000:]}{dry.stderr[-4000:]}", file=sys.stderr)
        stamp(False)
        raise SyncError(f"snakemake still plans jobs for {args.target} (its plan is above)")
    print(f"snakemake --dry-run {args.target}: nothing to be done")
