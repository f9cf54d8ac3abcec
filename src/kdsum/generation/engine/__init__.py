"""Decoding engines: greedy and beam search through a static KV cache, and the Triton decode kernel."""
