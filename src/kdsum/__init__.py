"""kdsum: a reproducible pipeline for Korean dialogue summarization.

The package holds the logic; ``scripts/`` are thin CLIs that Snakemake and DVC both call.
"""

__version__ = "0.1.0"
