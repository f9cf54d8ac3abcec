#!/usr/bin/env python
"""Same as `kdsum evaluate ...` (src/kdsum/stages/evaluate.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("evaluate", sys.argv[1:])
