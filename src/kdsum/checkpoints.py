"""Resume: what a checkpoint was trained with (its fingerprint), and which checkpoint to resume from.

The Trainer writes ``checkpoint-N`` folders to a checkpoint directory outside the declared outputs, bounded by
``train.save_total_limit``. A fingerprint of (the job minus generation and bookkeeping settings, effective method,
base model, prompt data, library versions) is stored there; a rerun with the same fingerprint resumes from the last
complete checkpoint, a different one wipes the folder and starts fresh (:func:`prepare_checkpoint_dir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path

from kdsum.io import read_json, write_json
from kdsum.spec import Job

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "bitsandbytes")
FINGERPRINT_LIBRARIES = ("torch", "transformers", "trl", "peft")
# Settings that do not change what is learned: a change in them must not throw checkpoints away.
NON_TRAINING_TRAIN_FIELDS = ("logging_steps", "save_steps", "save_total_limit")
_FULL_HASH_LIMIT = 64 * 2**20


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


def _is_complete(checkpoint: Path) -> bool:
    """The Trainer writes trainer_state.json last; a checkpoint is usable once that file is whole."""
    try:
        state = read_json(checkpoint / "trainer_state.json")
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


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


def _drop_partial_checkpoints(checkpoint_dir: Path, resume: str | None) -> None:
    resume_step = int(Path(resume).name.rsplit("-", 1)[1]) if resume else -1
    for step, path in _checkpoints(checkpoint_dir):
        if step > resume_step:
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)


def prepare_checkpoint_dir(checkpoint_dir: str | os.PathLike, fingerprint: dict) -> str | None:
    """Return the checkpoint to resume from, or None. Stale checkpoints (other fingerprint) are wiped, and partial
    checkpoints newer than the resume point are removed."""
    checkpoint_dir = Path(checkpoint_dir)
    fp_path = checkpoint_dir / FINGERPRINT_FILE
    resume = None
    if checkpoint_dir.exists():
        old = _stored_fingerprint(fp_path)
        if old == fingerprint["fingerprint"]:
            resume = last_complete_checkpoint(checkpoint_dir)
            _drop_partial_checkpoints(checkpoint_dir, resume)
        else:
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
