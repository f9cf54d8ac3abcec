"""The spec files (results/specs/NAME.json): every job's resolved settings, written for both engines by one function.

Snakemake writes them when the workflow loads (rules/common.smk), DVC through ``kdsum spec --configfile`` (its
``specs`` stage). A file is rewritten only when its content changed, so its mtime (Snakemake's trigger) and its
hash (DVC's) move exactly when the settings do, and the rules take the files as plain inputs.

The guard: outputs DVC made or restored (``dvc repro``, ``dvc pull``, ``dvc checkout``) carry no Snakemake records
and arbitrary mtimes, so before Snakemake plans on them the workflow stops with one line naming
``kdsum sync-mtimes``, which records them (and stamps :data:`SYNC_STAMP`).
"""

from __future__ import annotations

import os
from pathlib import Path

from kdsum.config.catalog import spec_for, spec_keys, spec_names
from kdsum.config.spec import to_json
from kdsum.io import write_text

SPEC_DIR = "results/specs"
# where a preview (`snakemake -n`, --summary, --dag, ...) puts a spec whose content would change: the plan shows
# the jobs it reruns, and results/ keeps the files the results were made from
PREVIEW_DIR = ".snakemake/kdsum-preview/specs"
PREVIEW_FLAGS = frozenset(
    "-n --dry-run --dryrun -S --summary -D --detailed-summary --dag --rulegraph --filegraph --d3dag --lint "
    "--list-changes --lc --list-code-changes --list-input-changes --li --list-params-changes --lp".split()
)
DVC_LOCK = "dvc.lock"
# touched by `kdsum sync-mtimes` once Snakemake's records match what DVC put in place
SYNC_STAMP = ".snakemake/kdsum-dvc-synced"
# `kdsum dvc-yaml` loads the workflow in-process to read its DAG: it must not be stopped by the guard
GUARD = {"on": True}


def spec_path(name: str, directory: str = SPEC_DIR) -> str:
    return f"{directory}/{name}.json"


def is_preview(argv: list[str]) -> bool:
    """Whether a Snakemake command line only plans or describes (no job runs): ``-n``, ``-np``, ``--summary``...
    False for any other program (say, pytest or `kdsum dvc-yaml` loading the workflow in-process)."""
    if not argv or Path(argv[0]).name not in ("snakemake", "__main__.py") or "snakemake" not in argv[0]:
        return False
    flags = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    short = "".join(a[1:] for a in argv if a[:1] == "-" and a[1:2] != "-" and a[1:].isalpha())
    return bool(flags & PREVIEW_FLAGS) or "n" in short or "S" in short or "D" in short


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    write_text(path, text)
    return True


def write_if_changed(root: str | os.PathLike, path: str, text: str, preview: bool, preview_dir: str) -> str | None:
    """Write ``text`` to ``path`` only when its content changed; the path written, or None. A preview writes a
    changed file that exists under ``preview_dir`` instead, always (newer than every result: the plan reruns them)."""
    target = Path(root) / path
    if not GUARD["on"] and target.is_file():  # only reading the DAG (kdsum dvc-yaml): no result's file changes
        return None
    if preview and target.is_file():
        if target.read_text(encoding="utf-8") == text:
            return None
        path = f"{preview_dir}/{path.split('/', 2)[2]}"  # results/<kind>/NAME -> preview_dir/NAME
        write_text(Path(root) / path, text)
        return path
    return path if _write_if_changed(target, text) else None


def write_specs(config: dict, root: str | os.PathLike = ".", preview: bool = False) -> dict[str, str]:
    """Write every spec the config's default target needs, each only when its content changed; name -> the
    (repo-relative) path written. A preview writes a changed spec that exists under :data:`PREVIEW_DIR` instead."""
    written = {}
    for name in spec_names(config):
        path = write_if_changed(root, spec_path(name), to_json(spec_for(config, name)), preview, PREVIEW_DIR)
        if path:
            written[name] = path
    return written


def spec_params(config: dict) -> list[str]:
    """The config keys any spec reads (DVC's params of the specs stage), a key once even if a wider one covers it."""
    keys = dict.fromkeys(k for name in spec_names(config) for k in spec_keys(config, name))
    return [k for k in keys if not any(k.startswith(f"{other}.") for other in keys)]


def unsynced(root: str | os.PathLike = ".") -> str | None:
    """The one-line reason to stop when dvc.lock changed after the last sync (None: nothing to do). Only where
    DVC is used: without dvc.lock Snakemake is the only engine."""
    lock, stamp = Path(root) / DVC_LOCK, Path(root) / SYNC_STAMP
    if not GUARD["on"] or not lock.is_file():
        return None
    if stamp.is_file() and stamp.stat().st_mtime >= lock.stat().st_mtime:
        return None
    return (
        f"{DVC_LOCK} changed after Snakemake last recorded the results (dvc repro/pull/checkout): "
        "run `kdsum sync-mtimes` first"
    )
