#!/usr/bin/env python
"""Same as `kdsum baseline ...` (src/kdsum/stages/baseline.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("baseline", sys.argv[1:])
