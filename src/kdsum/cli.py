"""Shared CLI plumbing: known errors become one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from kdsum.config import ConfigError
from kdsum.data import DataError
from kdsum.prompts import PromptError

KNOWN_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataError, PromptError)


def register_error(cls: type[BaseException]) -> None:
    global KNOWN_ERRORS
    if cls not in KNOWN_ERRORS:
        KNOWN_ERRORS = KNOWN_ERRORS + (cls,)


def run_cli(main: Callable[[], None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except KNOWN_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
