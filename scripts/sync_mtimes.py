#!/usr/bin/env python
"""Same as `kdsum sync-mtimes ...` (src/kdsum/stages/sync_mtimes.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("sync-mtimes", sys.argv[1:])
