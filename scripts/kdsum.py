#!/usr/bin/env python
"""Every stage from a checkout: ``python scripts/kdsum.py <stage> ...`` is ``kdsum <stage> ...`` (the rules call
``kdsum``). Needs the dependencies of pyproject.toml; the package is taken from ``src/`` when it is not installed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from kdsum.cli import main  # noqa: E402 (after the path set-up above)

main()
