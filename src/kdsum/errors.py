"""The one base class of the errors a user can fix: the CLI prints them as one line and exits 2 (kdsum.cli)."""


class KdsumError(Exception):
    """An input, config or environment problem; the message names the file, row or key."""
