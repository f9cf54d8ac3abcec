#!/usr/bin/env python
"""Same as `kdsum compare ...` (src/kdsum/stages/compare.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("compare", sys.argv[1:])
