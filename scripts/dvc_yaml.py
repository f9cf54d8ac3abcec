#!/usr/bin/env python
"""Same as `kdsum dvc-yaml ...` (src/kdsum/stages/dvc_yaml.py), for those who run scripts/ directly."""

import sys

from kdsum.cli import run_stage

run_stage("dvc-yaml", sys.argv[1:])
