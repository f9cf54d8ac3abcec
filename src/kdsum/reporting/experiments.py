"""DVC experiments side by side in a terminal (`kdsum exp-table`): per experiment, the params that differ between the
rows and each system's dev ``final``, read from ``dvc exp show --json`` (the params of config.yaml, the metrics
``results/scores/<system>/dev_metrics.json``), in a given width. ``dvc exp show`` itself lists every param, metric
and dep hash: hundreds of columns, truncated to "…" in a terminal."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Sequence

from kdsum.errors import KdsumError

SCORES = re.compile(r"results/scores/(?P<system>.+)/dev_metrics\.json$")


class ExperimentsError(KdsumError):
    """`dvc exp show` failed or gave no experiments."""


def dvc_exp_show(cwd: str = ".") -> list:
    """``dvc exp show --json`` of the repository at ``cwd``."""
    proc = subprocess.run(["dvc", "exp", "show", "--json"], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExperimentsError(f"dvc exp show --json failed: {last}")
    return json.loads(proc.stdout)


def _flat(tree: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _row(name: str, data: dict) -> dict:
    params: dict = {}
    for found in (data.get("params") or {}).values():
        params.update(_flat(found.get("data") or {}))
    finals = {}
    for path, found in (data.get("metrics") or {}).items():
        if (match := SCORES.search(path)) and "final" in (found.get("data") or {}):
            finals[match["system"]] = found["data"]["final"]
    return {"name": name, "params": params, "finals": finals}


def experiment_rows(shown: Sequence[dict]) -> list[dict]:
    """One row per workspace, commit and experiment of ``dvc exp show --json``: name, flat params, finals."""
    rows = []
    for entry in shown:
        rows.append(_row(entry.get("name") or entry["rev"], entry.get("data") or {}))
        for exp in entry.get("experiments") or []:
            rev = exp["revs"][0]
            rows.append(_row(f"└ {exp.get('name') or rev.get('name') or rev['rev'][:7]}", rev.get("data") or {}))
    return rows


def _changed(rows: list[dict], field: str) -> list[str]:
    keys = sorted({k for r in rows for k in r[field]})
    return [k for k in keys if len({json.dumps(r[field].get(k)) for r in rows}) > 1]


def short_names(keys: Sequence[str]) -> list[str]:
    """Each dotted key's shortest tail that no other key ends with (``tiny-llama.train.learning_rate``)."""
    parts = [k.split(".") for k in keys]
    out = []
    for p in parts:
        n = 1
        while n < len(p) and sum(q[-n:] == p[-n:] for q in parts) > 1:
            n += 1
        out.append(".".join(p[-n:]))
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _columns(rows: list[dict], all_systems: bool) -> list[tuple[str, list[str]]]:
    params = _changed(rows, "params")
    systems = sorted({s for r in rows for s in r["finals"]}) if all_systems else _changed(rows, "finals")
    cols = [("experiment", [r["name"] for r in rows])]
    cols += [(h, [_cell(r["params"].get(k)) for r in rows]) for h, k in zip(short_names(params), params, strict=True)]
    cols += [(s, [f"{r['finals'][s]:.2f}" if s in r["finals"] else "-" for r in rows]) for s in systems]
    return cols


def exp_table(shown: Sequence[dict], width: int = 120, all_systems: bool = False) -> str:
    """The table: the experiment, the params that differ, then ``final`` of each system whose final differs (every
    system's with ``all_systems``); columns past ``width`` are left out and counted."""
    rows = experiment_rows(shown)
    if not rows:
        raise ExperimentsError("dvc exp show listed nothing: run `dvc exp run` in a git repository first")
    cols, kept, used = _columns(rows, all_systems), [], 0
    for header, cells in cols:
        w = max(len(header), *(len(c) for c in cells))
        if used + w > width:
            break
        kept.append((header, cells, w))
        used += w + 2
    lines = ["  ".join(h.ljust(w) for h, _, w in kept).rstrip()]
    lines += ["  ".join(c[i].ljust(w) for _, c, w in kept).rstrip() for i in range(len(rows))]
    left = len(cols) - len(kept)
    note = f"; {left} more column(s) past {width} characters (--width)" if left else ""
    return "\n".join([*lines, f"(params that differ, then final on dev per system{note})"])
