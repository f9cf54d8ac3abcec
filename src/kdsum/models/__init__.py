"""Models: loading from a hub id or a local path, the data tokens, fitting rows to a context, and the small models built offline."""
