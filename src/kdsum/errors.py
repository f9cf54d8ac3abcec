"""The one base class of the errors a user can fix: the CLI prints them as one line and exits 2 (kdsum.cli); and
the system faults (disk full, read-only or denied paths, a path of the wrong kind) said as such errors."""

from __future__ import annotations

import errno
import os
import re
import shutil


class KdsumError(Exception):
    """An input, config or environment problem; the message names the file, row or key."""


class SystemFaultError(KdsumError):
    """The machine refused a read or write: the message names the path and what to do."""


# errno -> what happened, what to do; ``{verb}``: "writing", "reading" or (not known) "reading or writing"
_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free space there, or put results/ on a larger disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota, or put results/ elsewhere"),
    errno.EROFS: ("read-only file system", "run where the output directory is writable (a writable copy or mount)"),
    errno.EACCES: ("permission denied while {verb}", "check its owner and mode (ls -ld), or run as its owner"),
    errno.EPERM: ("operation not permitted while {verb}", "check its owner and mode (ls -ld), or run as its owner"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "remove or rename that file"),
    errno.EISDIR: ("is a directory, where a file was expected", "name the file, not the directory"),
    errno.EFBIG: ("file too large for the file system or the process limit (ulimit -f)", "raise the limit"),
}
FAULT_ERRNOS = frozenset(_FAULTS)


# libraries that write files themselves say the errno in their own words: safetensors ("... (os error 28)"), and
# torch's checkpoint writer not at all ("PytorchStreamWriter failed writing file", "unexpected pos N vs M")
_OS_ERROR_RE = re.compile(r"\(os error (\d+)\)")
_TORCH_WRITER = ("PytorchStreamWriter", "inline_container")
_NEARLY_FULL = 1 << 20  # bytes free below which a failed torch write is taken for a full disk


def _free_bytes(path) -> int:
    path = os.path.abspath(path)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def fault_errno(exc: BaseException, path=None) -> int | None:
    """The errno behind ``exc``: an ``OSError``'s own, the one a library names in its message, or ENOSPC for
    torch's failed write where the disk under ``path`` is (nearly) full."""
    if isinstance(exc, KdsumError):
        return None
    if isinstance(exc, OSError):
        return exc.errno
    if match := _OS_ERROR_RE.search(str(exc)):
        return int(match[1])
    torch_write = isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITER)
    if torch_write and path is not None and _free_bytes(path) < _NEARLY_FULL:
        return errno.ENOSPC
    return None


def system_fault(exc: BaseException, path=None, verb: str = "reading or writing") -> SystemFaultError | None:
    """``exc`` as one line naming ``path`` (else the path it names), or None when it is no fault of this kind."""
    code = fault_errno(exc, path)
    if code not in _FAULTS:
        return None
    what, todo = _FAULTS[code]
    where = path if path is not None else (getattr(exc, "filename", None) or "?")
    return SystemFaultError(f"{where}: {what.format(verb=verb)}; {todo}")
