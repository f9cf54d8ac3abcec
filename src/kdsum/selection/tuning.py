"""The dev set's two parts: TUNING rows, on which settings are selected (decoding, checkpoints), and REPORT rows,
on which the selected setting's score is reported. Never both on the same rows.

A row's part depends on its fname alone (a stable hash, :func:`tuning_share`), so adding or removing dev rows
never moves another row between the parts, and every stage (decoding search, checkpoint selection, the report
score) sees the same split. ``evaluation.tuning_fraction`` is the expected share of tuning rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from kdsum.errors import KdsumError

TUNING, REPORT = "tuning", "report"
PARTS = (TUNING, REPORT)


class TuningSplitError(KdsumError):
    """A dev set that the tuning fraction leaves without tuning or without report rows."""


def tuning_share(fname: str) -> float:
    """A number in [0, 1) fixed by ``fname``: the first 8 bytes of its SHA-256 (not Python's salted hash())."""
    digest = hashlib.sha256(str(fname).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def part_of(fname: str, fraction: float) -> str:
    return TUNING if tuning_share(fname) < fraction else REPORT


def split_fnames(fnames: Iterable[str], fraction: float, source: str = "dev") -> dict[str, list[str]]:
    """{tuning: [...], report: [...]}, each in the input order; refused when either part is empty."""
    fnames = list(fnames)
    parts: dict[str, list[str]] = {TUNING: [], REPORT: []}
    for f in fnames:
        parts[part_of(f, fraction)].append(f)
    for part, rows in parts.items():
        if not rows:
            raise TuningSplitError(
                f"{source}: key 'evaluation.tuning_fraction' ({fraction}) leaves no {part} rows among "
                f"{len(fnames)} dialogue(s); settings are selected on tuning rows and reported on report rows"
            )
    return parts


def part_fnames(fnames: Iterable[str], fraction: float, part: str, source: str = "dev") -> list[str]:
    if part not in PARTS:
        raise TuningSplitError(f"unknown dev part {part!r} (known: {', '.join(PARTS)})")
    return split_fnames(fnames, fraction, source)[part]
