"""Write (or --check) dvc.yaml from the Snakemake DAG.

With --check, a stale dvc.yaml is refused in one line naming the command to run. dvc.yaml's first stage runs the check, so `dvc repro` stops
before anything else when config.yaml changed the DAG."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdsum.io import write_text
from kdsum.workflow.dvc import CONFIG_FILE, DvcYamlError, dag_listing, render, snakemake_jobs, stale_message


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kdsum dvc-yaml", description=__doc__)
    ap.add_argument("--configfile", default=CONFIG_FILE, help="the config file (DVC's params file)")
    ap.add_argument("--out", default="dvc.yaml")
    ap.add_argument("--check", action="store_true", help="exit 2 if --out differs from what would be written")
    ap.add_argument("--dag-out", help="with --check: write the DAG's stage list here when it is current")
    args = ap.parse_args(argv)

    jobs = snakemake_jobs(args.configfile, root=Path.cwd())
    text = render(jobs, args.configfile, root=Path.cwd())
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        message = stale_message(current, text, str(out), args.configfile)
        if message:
            raise DvcYamlError(message)
        if args.dag_out:
            write_text(args.dag_out, dag_listing(jobs))
        print(f"{out} matches the Snakemake DAG ({len(jobs)} jobs)")
        return
    write_text(out, text)
    print(f"wrote {out}: {len(jobs) + 1} stages")
