#!/usr/bin/env python
"""Same as `kdsum predict ...` (src/kdsum/stages/predict.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("predict", sys.argv[1:])
