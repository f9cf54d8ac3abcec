"""Code dependencies of a stage: its module and every kdsum module it imports, directly or through others.

Each stage's list, with the sha256 of each file, goes into one small code file (results/code/STAGE.json), rewritten
only when its content changed: the rule's one code input and the DVC stage's one code dep, so its mtime (Snakemake's
trigger) and its hash (DVC's) move exactly when that stage's code does, and dvc.lock stays small.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import cache
from pathlib import Path

from kdsum.io import write_text
from kdsum.workflow.specs import write_if_changed

ROOT = Path(__file__).resolve().parents[3]
SRC = "src"
PACKAGE = "kdsum"
# A package's __init__.py holds its docstring (and kdsum's the version string), no code: a release bump or a
# reworded package description must not retrain models (tests/test_dvc.py checks they stay code-free).
INIT = "__init__.py"
# stage -> files, valid while no file under src/kdsum changed (path, size, mtime): the scan parses every module,
# the slowest part of loading the workflow, and its answer only changes with the code
CACHE = ".snakemake/kdsum-code-deps.json"
CODE_DIR = "results/code"
# where a preview puts a code file whose content would change (as kdsum.workflow.specs does for the specs)
PREVIEW_CODE_DIR = ".snakemake/kdsum-preview/code"


def module_file(module: str, root: Path = ROOT) -> str | None:
    """The repo-relative file of a ``kdsum[.x]`` module, or None when it is not a kdsum module on disk."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root / SRC / Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(root).as_posix()
    return None


def imported_modules(file: Path, module: str | None) -> set[str]:
    """Names of the modules imported anywhere in ``file`` (top level or inside functions)."""
    return set(_imported(str(file), module, file.stat().st_mtime_ns))


@cache
def _imported(file: str, module: str | None, mtime_ns: int) -> frozenset[str]:
    tree = ast.parse(Path(file).read_text(encoding="utf-8"), filename=file)
    package = module.rsplit(".", 1)[0] if module and Path(file).name != "__init__.py" else module
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside the package
                if not package:
                    continue
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from kdsum import x` imports kdsum.x
    return frozenset(found)


def code_deps(start: str, root: Path = ROOT) -> list[str]:
    """``start`` (a repo-relative file) and the kdsum modules it imports, transitively; start first."""
    seen: set[str] = set()
    todo: list[tuple[str, str | None]] = [(start, _module_name(start))]
    while todo:
        rel, module = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for name in imported_modules(root / rel, module):
            dep = module_file(name, root)
            if dep and dep not in seen:
                todo.append((dep, name))
    return [start] + sorted(f for f in seen - {start} if not f.endswith(INIT))


def _module_name(rel: str) -> str | None:
    if not rel.startswith(f"{SRC}/{PACKAGE}/"):
        return None
    return rel.removeprefix(f"{SRC}/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def code_fingerprint(root: Path = ROOT) -> str:
    """A digest of every file's path, size and mtime under src/kdsum: it moves when any module changes."""
    entries = []
    for folder, dirs, files in os.walk(root / SRC / PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            st = os.stat(os.path.join(folder, name))
            entries.append(f"{folder}/{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


@cache
def _cached_stages() -> dict:
    """The cache file's stage lists when it matches the code on disk (read once per process)."""
    fingerprint = code_fingerprint()
    try:
        cached = json.loads((ROOT / CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    stages = cached.get("stages", {}) if cached.get("fingerprint") == fingerprint else {}
    return {"fingerprint": fingerprint, "stages": stages}


def _remember(stage: str, files: list[str]) -> None:
    state = _cached_stages()
    state["stages"][stage] = files
    try:  # a cache: a read-only checkout just scans again next time
        (ROOT / CACHE).parent.mkdir(parents=True, exist_ok=True)
        write_text(ROOT / CACHE, json.dumps(state))
    except OSError:
        pass


@cache
def stage_code(stage: str) -> list[str]:
    """The files whose code decides what ``kdsum <stage>`` computes: the stage module and its kdsum imports. Not
    the command-line layer (cli.py dispatches, computes nothing): a change there reruns no stage."""
    if stage in _cached_stages()["stages"]:
        return list(_cached_stages()["stages"][stage])
    module = module_file(f"{PACKAGE}.stages.{stage.replace('-', '_')}")
    if module is None:
        raise ValueError(f"no module for stage '{stage}' (src/kdsum/stages/{stage.replace('-', '_')}.py)")
    files = code_deps(module)
    _remember(stage, files)
    return files


def stages(root: Path = ROOT) -> list[str]:
    """Every ``kdsum <stage>`` with a module under src/kdsum/stages."""
    found = (root / SRC / PACKAGE / "stages").glob("*.py")
    return sorted(p.stem.replace("_", "-") for p in found if p.name != INIT)


def code_path(stage: str, directory: str = CODE_DIR) -> str:
    return f"{directory}/{stage}.json"


def code_listing(stage: str, root: str | os.PathLike = ".") -> str:
    """The code file's text: each file ``kdsum <stage>`` runs (:func:`stage_code`) with its sha256 under ``root``."""
    files = {rel: hashlib.sha256((Path(root) / rel).read_bytes()).hexdigest() for rel in stage_code(stage)}
    return json.dumps({"stage": stage, "files": files}, indent=1) + "\n"


def write_code_files(root: str | os.PathLike = ".", preview: bool = False) -> dict[str, str]:
    """Write every stage's code file, each only when its content changed; stage -> the (repo-relative) path
    written. A preview writes a changed file that exists under :data:`PREVIEW_CODE_DIR` instead."""
    written = {}
    for stage in stages():
        path = write_if_changed(root, code_path(stage), code_listing(stage, root), preview, PREVIEW_CODE_DIR)
        if path:
            written[stage] = path
    return written
