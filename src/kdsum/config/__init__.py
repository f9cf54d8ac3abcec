"""Configuration: config files merged and validated, resolved into the typed job specs every stage reads."""
