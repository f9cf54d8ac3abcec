"""The one command-line layer: ``kdsum <stage> ...`` (console script) or ``python -m kdsum <stage> ...``.

A stage is a module ``kdsum.stages.<name>`` with ``main(argv)``; its docstring's first line is its summary here.
Modules are found on disk and imported only when called, so ``kdsum --help`` loads no library and a stage's code
dependencies are its own module's imports. Errors a user can fix (``KdsumError``, a missing file, a system fault
such as a full disk or a read-only, denied path: kdsum.errors.system_fault) print one line naming the file, row or
key and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import ast
import importlib
import logging
import sys
from pathlib import Path

from kdsum.errors import KdsumError, system_fault

STAGES_DIR = Path(__file__).parent / "stages"


def stage_name(path: Path) -> str:
    return path.stem.replace("_", "-")


def stage_summary(path: Path) -> str:
    """The first line of a stage module's docstring, read without importing it."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.splitlines()[0] if doc else ""


def stages() -> dict[str, str]:
    """Every stage, by command name, with its summary."""
    files = sorted(p for p in STAGES_DIR.glob("*.py") if not p.name.startswith("_"))
    return {stage_name(p): stage_summary(p) for p in files}


def stage_module(stage: str) -> str:
    return f"kdsum.stages.{stage.replace('-', '_')}"


def run_stage(stage: str, argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        importlib.import_module(stage_module(stage)).main(argv)
    except KdsumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename or exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a full disk, a read-only or denied path met outside kdsum.io's helpers
        fault = system_fault(exc)
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        sys.exit(2)


def usage(known: dict[str, str]) -> str:
    width = max(map(len, known))
    lines = [f"  {name:<{width}}  {text}" for name, text in known.items()]
    return "usage: kdsum STAGE [options]   (kdsum STAGE --help for a stage's options)\n\nstages:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    known = stages()
    if argv and argv[0] in known:
        run_stage(argv[0], argv[1:])
        return
    asked = not argv or argv[0] in ("-h", "--help")
    print(usage(known), file=sys.stdout if asked else sys.stderr)
    if not asked:
        print(f"error: unknown stage '{argv[0]}'", file=sys.stderr)
        sys.exit(2)
