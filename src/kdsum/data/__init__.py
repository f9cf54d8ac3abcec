"""Data: raw split files read and validated, leakage checks, split statistics and the prompt datasets."""
