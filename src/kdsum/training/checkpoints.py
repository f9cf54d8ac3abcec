"""Resume: what a checkpoint was trained with (its fingerprint), and which checkpoint to resume from.

The Trainer writes ``checkpoint-N`` folders to a checkpoint directory outside the declared outputs, bounded by
``train.save_total_limit``. A fingerprint of (the job minus generation and bookkeeping settings, effective method,
base model, prompt data, library versions) is stored there; a rerun with the same fingerprint resumes from the last
complete checkpoint, a different one wipes the folder and starts fresh (:func:`prepare_checkpoint_dir`).

Complete (:func:`checkpoint_problem`): ``trainer_state.json`` parses and names the folder's step; the weights
(``*.safetensors``, read by safetensors' own loader, or ``*.bin``), ``optimizer.pt`` and ``scheduler.pt`` are there
(the stage saves optimizer and scheduler states: resume is exact); every torch file is a whole zip archive and the
optimizer, scheduler and RNG states load with ``torch.load(weights_only=True)`` as the Trainer loads them (memory-
mapped: no copy). A crash, a full disk or a hand-truncated file leaves an incomplete checkpoint: it is removed with a
log line and the run resumes from the newest complete one.

Deleting (:func:`may_delete`): only inside the pipeline's results tree (a path under ``./results``) or a directory
the pipeline marked as its own (a checkpoint directory with its fingerprint file, an output directory with its
``train_metrics.json``), or an empty one. Anything else is refused, never wiped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import struct
import zipfile
from importlib import metadata
from pathlib import Path

from kdsum.config.spec import Job
from kdsum.errors import KdsumError
from kdsum.io import read_json, write_json

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")
FINGERPRINT_LIBRARIES = ("torch", "transformers", "trl", "peft")
# Settings that do not change what is learned: a change in them must not throw checkpoints away.
NON_TRAINING_TRAIN_FIELDS = ("logging_steps", "save_steps", "save_total_limit", "report_to")
_FULL_HASH_LIMIT = 64 * 2**20
RESULTS_DIR = "results"
# what a checkpoint needs for an exact resume (the stage saves with save_only_model=False)
REQUIRED_STATES = ("optimizer.pt", "scheduler.pt")
# torch files the Trainer reads back with torch.load(weights_only=True) on resume
LOADED_STATES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


class CheckpointError(KdsumError):
    """A checkpoint or output directory the training stage may not use (it would have to delete foreign files)."""


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions of ``names`` (None where a package is absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------------------------- hashing
def _hash_file(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}\n".encode())
    with open(path, "rb") as fh:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
        else:  # multi-GB weights: size + head + tail is enough to tell two builds apart
            h.update(fh.read(4 * 2**20))
            fh.seek(size - 4 * 2**20)
            h.update(fh.read())


def hash_path(path: str | os.PathLike) -> str:
    """Content hash of a file or of every file under a directory (names relative to it)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        _hash_file(path, h)
    else:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode() + b"\0")
            _hash_file(f, h)
    return h.hexdigest()


def training_settings(job: Job) -> dict:
    """The job as plain data, without what does not change the trained weights (generation, logging, saving)."""
    settings = {k: v for k, v in dataclasses.asdict(job).items() if k != "generation"}
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in NON_TRAINING_TRAIN_FIELDS}
    return settings


def compute_fingerprint(job: Job, base_source: str, prompts_dir: str | os.PathLike, method: str) -> dict:
    """What a checkpoint was trained with. Same fingerprint = safe to resume."""
    prompts_dir = Path(prompts_dir)
    base = Path(base_source)
    parts = {
        "spec": training_settings(job),
        "method_effective": method,
        "base": {"source": base_source, "hash": hash_path(base) if base.exists() else None},
        "prompts": {
            name: hash_path(prompts_dir / name)
            for name in ("train.jsonl", "special_tokens.json")
            if (prompts_dir / name).exists()
        },
        "libraries": library_versions(FINGERPRINT_LIBRARIES),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return {"fingerprint": digest, "parts": parts}


# --------------------------------------------------------------------------------------------- deleting
def in_results_tree(path: str | os.PathLike) -> bool:
    """Whether ``path`` (resolved: symlinks and ``..`` followed) lies strictly under ``./results``."""
    root = (Path.cwd() / RESULTS_DIR).resolve()
    target = Path(path).resolve()
    return target != root and target.is_relative_to(root)


def _has_fingerprint(path: Path, name: str) -> bool:
    try:
        data = read_json(path / name)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("fingerprint"), str)


def may_delete(path: str | os.PathLike, marker: str = FINGERPRINT_FILE) -> bool:
    """Whether the training stage may delete ``path``: absent, an empty directory, under ``./results``, or a
    directory the pipeline marked as its own (``marker``, a JSON file holding a ``fingerprint``)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return True
    if path.is_dir() and not path.is_symlink():
        if not any(path.iterdir()) or _has_fingerprint(path, marker):
            return True
    return in_results_tree(path)


def refuse_foreign(path: str | os.PathLike, what: str, marker: str = FINGERPRINT_FILE) -> None:
    """Raise CheckpointError unless :func:`may_delete` allows deleting ``path``."""
    if not may_delete(path, marker):
        raise CheckpointError(
            f"{what} {path} exists and is neither under ./{RESULTS_DIR}/ nor marked as the pipeline's own "
            f"({marker}): refusing to delete it; give a new or empty directory"
        )


# --------------------------------------------------------------------------------------------- checkpoints
def _checkpoints(checkpoint_dir: Path) -> list[tuple[int, Path]]:
    """``checkpoint-N`` folders, newest first (as transformers' ``get_last_checkpoint`` orders them)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for p in checkpoint_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        suffix = p.name[len(PREFIX_CHECKPOINT_DIR) + 1 :]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found, reverse=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _safetensors_problem(path: Path) -> str | None:
    """The safetensors loader's verdict (it checks that the header's tensors cover the file exactly)."""
    from safetensors import safe_open

    size = path.stat().st_size
    if size < 8:
        return f"{path.name}: {size} bytes"
    with open(path, "rb") as fh:
        (header,) = struct.unpack("<Q", fh.read(8))
    if 8 + header > size:
        return f"{path.name}: header of {header} bytes in a file of {size}"
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError for unreadable files)
        return f"{path.name}: {_first_line(exc)}"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """A torch.save file is a zip archive: its central directory (written last) must be there and every member
    inside the file; the states the Trainer loads must load."""
    import torch

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.header_offset + info.compress_size > size:
                    return f"{path.name}: member {info.filename} runs past the end of the file"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{path.name}: not a whole torch file ({exc})"
    if path.name in LOADED_STATES:
        from transformers.trainer_pt_utils import safe_globals  # numpy RNG states, allowed as the Trainer allows them

        try:
            with safe_globals():
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/...: all mean unusable
            return f"{path.name}: torch.load fails ({_first_line(exc)})"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (see the module docstring: Complete), or None when it can."""
    checkpoint = Path(checkpoint)
    try:
        state = read_json(checkpoint / "trainer_state.json")
    except (OSError, ValueError) as exc:
        return f"trainer_state.json unreadable ({type(exc).__name__})"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json has no global_step"
    step = checkpoint.name.rsplit("-", 1)[-1]
    if step.isdigit() and int(step) != state["global_step"]:
        return f"trainer_state.json says step {state['global_step']}, the folder {step}"
    try:
        files = {p.name: p for p in checkpoint.iterdir() if p.is_file()}
        missing = [name for name in REQUIRED_STATES if name not in files]
        if missing:
            return f"no {', '.join(missing)}"
        weights = [p for n, p in files.items() if n.endswith(".safetensors") or (n.endswith(".bin") and "model" in n)]
        if not weights:
            return "no model or adapter weights"
        for name, path in sorted(files.items()):
            problem = None
            if name.endswith(".safetensors"):
                problem = _safetensors_problem(path)
            elif name.endswith(_TORCH_SUFFIXES):
                problem = _torch_file_problem(path)
            elif name.endswith(".json"):
                try:
                    read_json(path)
                except ValueError as exc:
                    problem = f"{name}: not JSON ({exc})"
            if problem:
                return problem
    except OSError as exc:  # a file removed under us (the Trainer rotating checkpoints) or unreadable
        return f"{type(exc).__name__}: {exc}"
    return None


def _is_complete(checkpoint: Path) -> bool:
    return checkpoint_problem(checkpoint) is None


def last_complete_checkpoint(checkpoint_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` that was completely written (a run killed while saving leaves a partial one).

    Read-only: safe to call while a training process is writing checkpoints."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    for _, path in _checkpoints(checkpoint_dir):
        if _is_complete(path):
            return str(path)
    return None


def _stored_fingerprint(path: Path) -> str | None:
    try:
        return read_json(path).get("fingerprint") if path.exists() else None
    except (OSError, ValueError, AttributeError):
        return None


def _drop_incomplete_checkpoints(checkpoint_dir: Path) -> str | None:
    """Remove every incomplete checkpoint (with a log line saying why); return the newest complete one."""
    resume = None
    for _, path in _checkpoints(checkpoint_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            resume = resume or str(path)
        else:
            log.warning("removing incomplete checkpoint %s (%s)", path, problem)
            shutil.rmtree(path, ignore_errors=True)
    return resume


def prepare_checkpoint_dir(checkpoint_dir: str | os.PathLike, fingerprint: dict) -> str | None:
    """Return the checkpoint to resume from, or None. Stale checkpoints (other fingerprint) are wiped, and
    incomplete checkpoints are removed. A non-empty directory that is not the pipeline's (:func:`may_delete`) is
    refused, never wiped."""
    checkpoint_dir = Path(checkpoint_dir)
    fp_path = checkpoint_dir / FINGERPRINT_FILE
    resume = None
    if checkpoint_dir.exists():
        old = _stored_fingerprint(fp_path)
        if old == fingerprint["fingerprint"]:
            resume = _drop_incomplete_checkpoints(checkpoint_dir)
        else:
            refuse_foreign(checkpoint_dir, "--checkpoint-dir")
            if any(checkpoint_dir.iterdir()):
                log.warning(
                    "checkpoints in %s were made with other settings (fingerprint %s, now %s): starting fresh",
                    checkpoint_dir,
                    (old or "none")[:12],
                    fingerprint["fingerprint"][:12],
                )
            shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    write_json(fp_path, fingerprint)
    return resume


def remove_checkpoints(checkpoint_dir: str | os.PathLike) -> None:
    """After a successful run: the checkpoint directory, which :func:`prepare_checkpoint_dir` made the pipeline's
    own (its fingerprint file; the Trainer adds checkpoints and a model card), unless it is no longer marked so."""
    checkpoint_dir = Path(checkpoint_dir)
    if checkpoint_dir.is_dir() and may_delete(checkpoint_dir):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    elif checkpoint_dir.exists():
        log.warning("kept %s: it is no longer marked as the pipeline's (%s)", checkpoint_dir, FINGERPRINT_FILE)
