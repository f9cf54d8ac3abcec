"""Training: the Trainer built from a spec, its data, hooks, checkpoints, candidates, tracking and report."""
