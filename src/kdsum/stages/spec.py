"""Write the spec files (results/specs/NAME.json): each job's resolved settings, the only config a stage reads.

The same function writes them when the Snakemake workflow loads and in DVC's ``specs`` stage
(kdsum.workflow.specs); a file is rewritten only when its content changed, so an unchanged setting reruns nothing.

    kdsum spec --configfile config.yaml                           every spec and code file (only the changed ones)
    kdsum spec NAME --configfile config.yaml --out FILE            one spec, to FILE
NAME: data | evaluation | summary | report | prompts/P | base/M | model/M/V | decode/M/V/S | ensemble/E.
"""

from __future__ import annotations

import argparse

import yaml

from kdsum.config.catalog import spec_for
from kdsum.config.files import ConfigError
from kdsum.config.resolve import load_config
from kdsum.config.spec import to_json
from kdsum.io import write_text
from kdsum.workflow.deps import write_code_files
from kdsum.workflow.specs import write_specs


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs as Snakemake's --config reads them (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        out[key] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="kdsum spec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("name", nargs="?", help="one spec (with --out); default: every spec under results/specs")
    ap.add_argument("--out", help="with NAME: the file to write")
    ap.add_argument("--configfile", action="append", help="config files, merged in order (default: config.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides")
    args = ap.parse_args(argv)
    if bool(args.name) != bool(args.out):
        ap.error("NAME and --out go together")
    config = load_config(args.configfile or ["config.yaml"], parse_overrides(args.set))
    if args.name:
        write_text(args.out, to_json(spec_for(config, args.name)))
        print(f"wrote {args.out}")
        return
    changed = [*write_specs(config).values(), *write_code_files().values()]
    print(f"{len(changed)} spec/code file(s) changed" + "".join(f"\n  {p}" for p in changed))
