#!/usr/bin/env python
"""Same as `kdsum build-base ...` (src/kdsum/stages/build_base.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("build-base", sys.argv[1:])
