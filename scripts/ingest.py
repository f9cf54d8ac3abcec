#!/usr/bin/env python
"""Same as `kdsum ingest ...` (src/kdsum/stages/ingest.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("ingest", sys.argv[1:])
