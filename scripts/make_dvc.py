#!/usr/bin/env python
"""Generate dvc.yaml from config.yaml and the pipeline plan (or, with --check, fail if it is stale)."""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from kdsum.cli import run_cli  # noqa: E402


def main() -> None:
    from kdsum.config import load_config
    from kdsum.dvcgen import render
    from kdsum.io import write_text

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--out", default="dvc.yaml")
    ap.add_argument("--check", action="store_true", help="exit 1 if --out differs from what would be written")
    args = ap.parse_args()
    text = render(load_config(args.config), args.config)
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            print(f"{out} is stale: run `python scripts/make_dvc.py --config {args.config}`", file=sys.stderr)
            sys.exit(1)
        print(f"{out} is up to date")
        return
    write_text(out, text)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_cli(main)
