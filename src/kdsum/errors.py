"""The one base class of the errors a user can fix: the CLI prints them as one line and exits 2 (kdsum.cli); and
the system faults (disk full, read-only or denied paths, a path of the wrong kind) said as such errors."""

from __future__ import annotations

import errno


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


def system_fault(exc: OSError, path=None, verb: str = "reading or writing") -> SystemFaultError | None:
    """``exc`` as one line naming ``path`` (else the path it names), or None when it is no fault of this kind."""
    if exc.errno not in _FAULTS:
        return None
    what, todo = _FAULTS[exc.errno]
    where = path if path is not None else (exc.filename or "?")
    return SystemFaultError(f"{where}: {what.format(verb=verb)}; {todo}")
