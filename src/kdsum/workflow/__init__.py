"""The workflow engines' adapter: code dependencies of each stage and dvc.yaml derived from the Snakemake DAG."""
