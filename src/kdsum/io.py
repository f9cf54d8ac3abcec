"""Atomic file output: results appear whole or not at all.

Every writer in the pipeline goes through these helpers, so a crash or a refused input
never leaves a half-written file behind for Snakemake or DVC to mistake for a result.

Temporary files and directories are hidden siblings of their target with a recognisable name,
``.{target}.{host}.{pid}.{token}.kdsum-tmp``. A process killed outright (SIGKILL, power loss) cannot remove
its own; every later atomic write to the same target removes them (:func:`remove_stale_temps`): those of
processes of this host that no longer run, those of other hosts after a day, and the ``.{target}.XXXXXXXX.tmp``
files of earlier versions of these helpers after an hour.

A full disk, a read-only or denied path, or a file where a directory should be is raised as one line naming the
target and what to do (:func:`faults_as_errors`, :class:`kdsum.errors.SystemFaultError`), after the temporary is
removed; the readers take regular files only (:func:`check_regular_file`: a FIFO would block forever).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from kdsum.errors import SystemFaultError, system_fault

TEMP_SUFFIX = ".kdsum-tmp"
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "host"
_TEMP_RE = re.compile(r"\.(?P<target>.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))
# tempfile.mkstemp(prefix=".{target}.", suffix=".tmp"), as earlier versions named their temporary files
_LEGACY_RE = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")
_FOREIGN_HOST_AGE_S = 24 * 3600
_LEGACY_AGE_S = 3600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_name(target: str) -> str:
    """A fresh temporary name for ``target`` (a file or directory name), in the directory of ``target``."""
    return f".{target}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.fullmatch(name) is not None or _LEGACY_RE.fullmatch(name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return False
    return True


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0


def _is_stale(path: Path) -> bool:
    match = _TEMP_RE.fullmatch(path.name)
    if match is not None:
        if match["host"] != _HOST:
            return _age_s(path) > _FOREIGN_HOST_AGE_S
        pid = int(match["pid"])
        return pid != os.getpid() and not _pid_alive(pid)
    return _LEGACY_RE.fullmatch(path.name) is not None and _age_s(path) > _LEGACY_AGE_S


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(directory: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Remove the temporary files and directories left in ``directory`` by killed writers (of ``target`` only,
    if given); return what was removed. Temporaries of running processes are left alone."""
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP_RE.fullmatch(entry.name) or _LEGACY_RE.fullmatch(entry.name)
        if match is None or (target is not None and match["target"] != target) or not _is_stale(entry):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # the parent is a file: say so as the system does for a deeper path
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent)) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success."""
    path = Path(path)
    with faults_as_errors(path):
        _make_parent(path)
        remove_stale_temps(path.parent, path.name)
        tmp_path = path.parent / temp_name(path.name)
        os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            yield tmp_path
            if tmp_path.exists():  # created 0600; results are ordinary files (0644 under umask 022)
                os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
        finally:
            with contextlib.suppress(OSError):  # gone already, or the file system went read-only
                tmp_path.unlink(missing_ok=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy_file)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        _link_or_copy_file(src, dst)


def _link_or_copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, replace_only: Collection[str] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; swap it into place as a whole only on success.

    ``replace_only``: the names this writer owns in ``path``; any other entry of an existing ``path`` (e.g. the
    ``.gitignore`` DVC keeps beside its outputs) is carried into the new directory. ``None``: ``path`` is replaced
    whole. Where the system has it the swap is one atomic exchange; elsewhere the old directory is renamed away
    first, so ``path`` is always either the old directory, the new one, or (briefly) absent, never a mix.
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    with faults_as_errors(path), _atomic_dir(path, replace_only) as tmp:
        yield tmp


@contextlib.contextmanager
def _atomic_dir(path: Path, replace_only: Collection[str] | None) -> Iterator[Path]:
    _make_parent(path)
    remove_stale_temps(path.parent, path.name)
    tmp = path.parent / temp_name(path.name)
    tmp.mkdir(mode=0o700)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if replace_only is not None and path.is_dir():
            for entry in path.iterdir():
                if entry.name not in replace_only and not is_temp_name(entry.name) and not (tmp / entry.name).exists():
                    _link_or_copy(entry, tmp / entry.name)
        if path.exists() and _exchange(tmp, path):
            _remove(tmp)  # now the old directory
        else:
            old = None
            if path.exists():
                old = path.parent / temp_name(path.name)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                _remove(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def faults_as_errors(path: str | os.PathLike, verb: str = "writing") -> Iterator[None]:
    """A full disk, a read-only or denied ``path`` (or a file where a directory should be) raised inside as one
    line naming ``path`` (:func:`kdsum.errors.system_fault`); other errors pass unchanged."""
    try:
        yield
    except Exception as exc:  # an OSError, or a library's own error for one (kdsum.errors.fault_errno)
        fault = system_fault(exc, path, verb)
        if fault is None:
            raise
        raise fault from None


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def check_regular_file(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse an input that is no regular file (reading a FIFO would wait for a writer forever); a missing one
    raises FileNotFoundError as ``open`` would. Symbolic links are followed."""
    with faults_as_errors(path, "reading"):
        mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise SystemFaultError(f"{path}: is {kind}, not a regular {what}; name a regular file")


def read_bytes(path: str | os.PathLike) -> bytes:
    """A regular file's bytes (:func:`check_regular_file`), with system faults said in one line."""
    check_regular_file(path)
    with faults_as_errors(path, "reading"):
        return Path(path).read_bytes()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike, frame: Any, *, index: bool = False) -> None:
    """A pandas DataFrame as UTF-8 CSV with ``\\n`` line ends (the pipeline's prediction and table files)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=index, encoding="utf-8", lineterminator="\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    check_regular_file(path)
    with faults_as_errors(path, "reading"), open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_json(path: str | os.PathLike) -> Any:
    check_regular_file(path)
    with faults_as_errors(path, "reading"), open(path, encoding="utf-8") as fh:
        return json.load(fh)
