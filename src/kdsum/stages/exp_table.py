"""DVC experiments side by side: the params that differ and each system's dev final, in 120 columns.

    kdsum exp-table [--width 120] [--all-systems] [--json SAVED]

Reads `dvc exp show --json` of the repository here (or a saved copy) and prints one row per workspace, commit and
experiment (kdsum.reporting.experiments). Errors: ``error: ...``, exit 2.
"""

from __future__ import annotations

import argparse

from kdsum.io import read_json
from kdsum.reporting.experiments import dvc_exp_show, exp_table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="kdsum exp-table", description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=120, help="characters per line (default 120)")
    ap.add_argument("--all-systems", action="store_true", help="every system's final, not only those that differ")
    ap.add_argument("--json", help="a saved `dvc exp show --json` output instead of running it here")
    args = ap.parse_args(argv)
    shown = read_json(args.json) if args.json else dvc_exp_show()
    print(exp_table(shown, args.width, args.all_systems))
