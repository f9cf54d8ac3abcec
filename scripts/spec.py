#!/usr/bin/env python
"""Same as `kdsum spec ...` (src/kdsum/stages/spec.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("spec", sys.argv[1:])
