"""Write (or --check) dvc.yaml from the Snakemake DAG; with --exports, export/dvc.yaml too.

With --check, a stale file is refused in one line naming the command to run. dvc.yaml's first stage runs the check,
so `dvc repro` stops before anything else when config.yaml changed the DAG. export/dvc.yaml holds the export of every
fine-tuned system, which a plain `dvc repro` does not run (`dvc repro export/dvc.yaml`). It is written when asked for
(--exports), then kept current like dvc.yaml wherever it exists: DVC's commands without a target see its stages too,
so a project that never exports has none."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdsum.io import write_text
from kdsum.workflow.dvc import (
    CONFIG_FILE,
    EXPORT_FILE,
    DvcYamlError,
    dag_listing,
    export_targets,
    render,
    render_exports,
    snakemake_jobs,
    split_jobs,
    stale_message,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="kdsum dvc-yaml", description=__doc__)
    ap.add_argument("--configfile", default=CONFIG_FILE, help="the config file (DVC's params file)")
    ap.add_argument("--out", default="dvc.yaml")
    ap.add_argument("--export-out", help=f"the exports' file (default: {EXPORT_FILE} beside --out)")
    ap.add_argument("--exports", action="store_true", help="write the exports' file (kept current once it exists)")
    ap.add_argument("--check", action="store_true", help="exit 2 if a file differs from what would be written")
    ap.add_argument("--dag-out", help="with --check: write the DAG's stage list here when it is current")
    return ap.parse_args(argv)


def check(files: dict[Path, str], configfile: str) -> None:
    for out, text in files.items():
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if message := stale_message(current, text, str(out), configfile):
            raise DvcYamlError(message)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path.cwd()
    out = Path(args.out)
    export_out = Path(args.export_out) if args.export_out else out.parent / EXPORT_FILE
    with_exports = (args.exports and not args.check) or export_out.is_file()
    targets = tuple(export_targets(args.configfile, root)) if with_exports else ()
    jobs, exports = split_jobs(snakemake_jobs(args.configfile, root, extra=targets))
    files = {out: render(jobs, args.configfile, root)}
    if with_exports:
        files[export_out] = render_exports(exports)
    if args.check:
        check(files, args.configfile)
        if args.dag_out:
            write_text(args.dag_out, dag_listing(jobs))
        verb = "match" if len(files) > 1 else "matches"
        print(f"{' and '.join(map(str, files))} {verb} the Snakemake DAG ({len(jobs)} jobs, {len(exports)} exports)")
        return
    for path, text in files.items():
        write_text(path, text)
    print(f"wrote {out}: {len(jobs) + 2} stages" + (f"; {export_out}: {len(exports)} stages" if with_exports else ""))
