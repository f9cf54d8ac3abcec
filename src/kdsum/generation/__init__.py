"""Generation: summaries from a loaded model, the non-neural baselines, and the decoding engines (engine/)."""
