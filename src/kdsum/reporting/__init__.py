"""Reporting: results/summary.csv and summary.md, comparisons, the report's examples page, the submission file."""
