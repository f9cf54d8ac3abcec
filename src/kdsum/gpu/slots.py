"""GPU slots: which devices of a multi-GPU machine a job uses, when several GPU jobs run at once.

Snakemake's ``--resources gpu=N`` limits how many GPUs the running jobs declare (``resources: gpu=...``), but it
assigns no device ids. Each GPU stage (``kdsum train``, ``kdsum predict``) therefore claims its devices itself,
before torch initialises CUDA: one lock file per device (``gpu<i>.lock`` in :func:`slot_dir`), taken with
``flock``. The kernel drops a flock when its process dies, however it dies (SIGKILL included), so a crashed job
frees its slots without any cleanup; a stale lock file is only a file. The claimed ids go to
``CUDA_VISIBLE_DEVICES``, so the job sees its devices as ``cuda:0..n-1``.

The pool (:func:`device_ids`): ``KDSUM_GPUS`` (a count, also how tests simulate devices on a CPU), else the ids of
an inherited ``CUDA_VISIBLE_DEVICES`` (a user who limits the run to some devices), else one per line of
``nvidia-smi -L``. No devices: nothing is claimed and ``CUDA_VISIBLE_DEVICES`` is left alone.

A job needing n slots takes all n or none (it releases a partial set and retries), so two multi-GPU jobs never
hold half each and wait forever. ``KDSUM_GPU_SLOTS=0`` turns the claiming off (devices chosen by hand).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from kdsum.errors import KdsumError

log = logging.getLogger(__name__)

DIR_ENV = "KDSUM_GPU_SLOTS_DIR"  # where the lock files live (default: results/gpu-slots of the working directory)
COUNT_ENV = "KDSUM_GPUS"  # the number of devices, instead of asking nvidia-smi
SWITCH_ENV = "KDSUM_GPU_SLOTS"  # "0": claim nothing
HELD_ENV = "KDSUM_GPU_SLOTS_HELD"  # set for child processes (torchrun ranks) whose parent holds the slots
DEFAULT_DIR = "results/gpu-slots"


class GpuSlotError(KdsumError):
    """More GPUs asked for than the machine has, or a bad ``KDSUM_GPUS``."""


def slot_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _nvidia_smi_count() -> int:
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def device_ids(environ: dict | None = None) -> list[str]:
    """The device ids jobs share (see the module docstring for the order of the sources)."""
    environ = os.environ if environ is None else environ
    count = environ.get(COUNT_ENV)
    if count not in (None, ""):
        if not count.isdigit():
            raise GpuSlotError(f"environment variable {COUNT_ENV}={count!r}: expected a number of GPUs")
        return [str(i) for i in range(int(count))]
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    return [str(i) for i in range(_nvidia_smi_count())]


class Slots:
    """Held device slots: the ids, and the open lock files (closing them releases the locks)."""

    def __init__(self, ids: list[str], files: list):
        self.ids, self._files = ids, files

    def release(self) -> None:
        for fh in self._files:
            fh.close()  # closing the last descriptor drops the flock
        self._files = []


def _try_lock(path: Path):
    fh = open(path, "a+")  # noqa: SIM115 - kept open while the slot is held
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")  # who holds it, for a person looking; the lock itself is what counts
    fh.flush()
    return fh


def acquire(n: int, ids: list[str], directory: Path, timeout: float | None = None, poll: float = 0.5) -> Slots:
    """Take ``n`` of the slots ``ids``, waiting while fewer are free; all or none at each attempt."""
    if n > len(ids):
        raise GpuSlotError(
            f"the job needs {n} GPU(s) but {len(ids)} are available (train.num_gpus, or {COUNT_ENV} / "
            f"CUDA_VISIBLE_DEVICES)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    start, waited = time.monotonic(), False
    while True:
        held: list[tuple[str, object]] = []
        for dev in ids:
            fh = _try_lock(directory / f"gpu{dev}.lock")
            if fh is not None:
                held.append((dev, fh))
                if len(held) == n:
                    return Slots([d for d, _ in held], [f for _, f in held])
        for _, fh in held:  # a partial set goes back: no job waits holding slots another needs
            fh.close()
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"no {n} free GPU slot(s) in {directory} within {timeout:.0f} s")
        if not waited:
            log.info("waiting for %d free GPU slot(s) of %d (%s)", n, len(ids), directory)
            waited = True
        time.sleep(poll)


@contextlib.contextmanager
def claim(n: int, environ: dict | None = None) -> Iterator[list[str] | None]:
    """Hold ``n`` GPU slots for the duration, with ``CUDA_VISIBLE_DEVICES`` set to them; yields the ids, or None
    when nothing is claimed (no devices, turned off, or a parent process holds them for this one)."""
    environ = os.environ if environ is None else environ
    if n <= 0 or environ.get(SWITCH_ENV) == "0" or environ.get(HELD_ENV) == "1":
        yield None
        return
    ids = device_ids(environ)
    if not ids:
        yield None
        return
    slots = acquire(n, ids, slot_dir())
    environ["CUDA_VISIBLE_DEVICES"] = ",".join(slots.ids)
    environ[HELD_ENV] = "1"
    log.info("GPU slot(s) %s claimed (CUDA_VISIBLE_DEVICES)", ",".join(slots.ids))
    try:
        yield slots.ids
    finally:
        slots.release()
        environ.pop(HELD_ENV, None)
