#!/usr/bin/env python
"""Same as `kdsum train ...` (src/kdsum/stages/train.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("train", sys.argv[1:])
