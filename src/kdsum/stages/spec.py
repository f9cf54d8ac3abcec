"""``kdsum spec NAME --out results/specs/NAME.json``: one job's resolved settings, the only config a stage reads.

Under Snakemake the engine hands over the spec it resolved (``--json``, its ``--configfile`` overlays and
``--config`` overrides included); under DVC the stage resolves it from the config file itself (``--configfile``).
Both write the same file for the same config. NAME: data | evaluation | summary | prompts/P | base/M | model/M/V.
"""

from __future__ import annotations

import argparse
import json

import yaml

from kdsum.config.catalog import spec_for
from kdsum.config.files import ConfigError
from kdsum.config.resolve import load_config
from kdsum.config.spec import SpecError, from_dict, to_json
from kdsum.io import write_text


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
    ap.add_argument("name")
    ap.add_argument("--out", required=True)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", help="the spec as the engine resolved it")
    src.add_argument("--configfile", action="append", help="config files, merged in order")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides (with --configfile)")
    args = ap.parse_args(argv)

    if args.configfile:
        spec = spec_for(load_config(args.configfile, parse_overrides(args.set)), args.name)
    else:
        try:
            spec = from_dict(json.loads(args.json))
        except (ValueError, TypeError) as exc:
            raise SpecError(f"spec '{args.name}': the engine's --json is not a spec ({exc})") from None
    write_text(args.out, to_json(spec))
    print(f"wrote {args.out} ({type(spec).__name__})")
