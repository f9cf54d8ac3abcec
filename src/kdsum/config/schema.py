"""The settings sections of schemas/config.schema.yaml, written from their one declaration (kdsum.config.spec).

``train``, ``lora``, ``quantization`` and ``generation`` under ``$defs`` (which ``defaults``, ``models.*``,
``variants.*`` and ``decoding.grid.*`` refer to) are generated from the fields of TrainArgs, LoraArgs,
QuantizationArgs and GenerationArgs; the rest of the file is written by hand. The committed file is what
validation reads (and what the spec stages depend on), so a field changed in kdsum.config.spec needs

    python3 -m kdsum.config.schema          # rewrite the generated block
    python3 -m kdsum.config.schema --check  # exit 1 when the file is stale (a test runs it)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from kdsum.config.spec import GenerationArgs, LoraArgs, QuantizationArgs, TrainArgs
from kdsum.errors import KdsumError
from kdsum.io import write_text

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"
SECTION_TYPES = {"train": TrainArgs, "lora": LoraArgs, "quantization": QuantizationArgs, "generation": GenerationArgs}
BEGIN = "  # >>> generated from kdsum.config.spec by `python3 -m kdsum.config.schema`: edit the dataclasses, not this\n"
END = "  # <<< generated\n"
JSON_TYPES = {int: "integer", float: "number", bool: "boolean", str: "string"}
COMBINERS = ("enum", "const", "oneOf", "anyOf")  # the schema names the values itself: no "type"


class SchemaError(KdsumError):
    """A schema file without the generated block's markers (not a config error: the repository is broken)."""


def field_schema(f: dataclasses.Field, hint: Any) -> dict:
    """One field's JSON schema: its type (from the annotation, unless it lists its values), bounds, description."""
    own = dict(f.metadata["schema"])
    head = {} if any(k in own for k in COMBINERS) else {"type": JSON_TYPES[hint]}
    return {**head, **own, "description": f.metadata["description"]}


def section_schema(cls: type) -> dict:
    hints = typing.get_type_hints(cls)
    props = {f.name: field_schema(f, hints[f.name]) for f in dataclasses.fields(cls)}
    return {"type": "object", "additionalProperties": False, "properties": props}


def _flat(value: Any) -> bool:
    """Written on one line: a scalar, or a list / mapping of such that is no field's entry (those hold a description)."""
    if isinstance(value, list):
        return all(map(_flat, value))
    if isinstance(value, dict):
        return "description" not in value and all(map(_flat, value.values()))
    return True


class _Dumper(yaml.SafeDumper):
    """Block style for the sections and each field, flow style for value lists; no anchors for shared lists."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(dict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v, flow_style=_flat(v)))
_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=_flat(v)))


def generated_block() -> str:
    sections = {name: section_schema(cls) for name, cls in SECTION_TYPES.items()}
    text = yaml.dump(sections, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    return BEGIN + "".join(f"  {line}\n" for line in text.splitlines()) + END


def render(text: str) -> str:
    """``text`` (the schema file) with its generated block rewritten."""
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SchemaError(f"{SCHEMA_PATH}: the generated block's markers are missing or repeated")
    head, rest = text.split(BEGIN)
    return head + generated_block() + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python3 -m kdsum.config.schema", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the file differs from its declarations")
    args = ap.parse_args(argv)
    text = SCHEMA_PATH.read_text(encoding="utf-8")
    fresh = render(text)
    if args.check:
        if fresh != text:
            sys.exit(f"{SCHEMA_PATH} is stale: run `python3 -m kdsum.config.schema`")
        print(f"{SCHEMA_PATH.name} matches kdsum.config.spec")
        return
    if fresh != text:
        write_text(SCHEMA_PATH, fresh)
    print(f"{'wrote' if fresh != text else 'unchanged:'} {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
