#!/usr/bin/env python
"""Same as `kdsum submission ...` (src/kdsum/stages/submission.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("submission", sys.argv[1:])
