"""Selection on the dev set's tuning rows: decoding settings, checkpoints, and MBR ensembles."""
