"""One module per pipeline stage: argument parsing and the call into the library (``kdsum <stage>``)."""
