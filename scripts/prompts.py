#!/usr/bin/env python
"""Same as `kdsum prompts ...` (src/kdsum/stages/prompts.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("prompts", sys.argv[1:])
