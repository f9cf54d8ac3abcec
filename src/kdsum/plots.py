"""The one way the pipeline draws a PNG: matplotlib without a display, written atomically."""

from __future__ import annotations

from pathlib import Path

from kdsum.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: a stage that draws nothing never pays for it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, out: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
