#!/usr/bin/env python
"""Same as `kdsum summary ...` (src/kdsum/stages/summary.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("summary", sys.argv[1:])
