"""The pipeline on a real SLURM: `snakemake --workflow-profile profiles/slurm` in a fresh copy of the repo.

.ci/slurm/start.sh starts a one-node SLURM on this machine (munge, slurmctld, slurmd; no accounting database, so
the executor plugin reads job states with squeue). One fine-tuned system's dev score (tiny-llama under the fast
config, with the CPU node's resources: tests/fixtures/config.slurm.yaml). Checks that every job of its DAG ran as a
SLURM job (its id in Snakemake's log, its SLURM log file, its state COMPLETED in slurmctld) and that the score is the
one the run's shared `dvc repro` of the same fast config wrote (tests/conftest.py). Skips only when SLURM cannot
start here (no binaries, or not root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / ".ci" / "slurm" / "start.sh"
OVERLAYS = ["--configfile", "tests/fixtures/config.fast.yaml", "tests/fixtures/config.slurm.yaml"]
ONE_MODEL = ["--config", "run__models=[tiny-llama]"]  # the LoRA path; its fast-config scores are not all 0
# one fine-tuned system's dev score: every kind of job a model needs (data, prompts, base, training, checkpoint and
# decoding selection, prediction, scoring), each on SLURM, without the gathering jobs of a whole run
TARGET = "results/scores/tiny-llama/default/dev.json"
# fast polling for a test (the plugin's default waits 40 s before the first status check)
SLURM_TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+?)\)")


@pytest.fixture(scope="module")
def slurm():
    up = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True) if shutil.which("sinfo") else None
    if not (up and up.returncode == 0 and re.search(r"idle|mixed|allocated", up.stdout)):
        if not shutil.which("slurmctld") or os.geteuid() != 0:
            pytest.skip(
                "SLURM cannot start here: needs slurmctld/slurmd/munge (apt-get install slurmctld slurmd "
                "slurm-client munge) and root for .ci/slurm/start.sh"
            )
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True)
        assert proc.returncode == 0, f".ci/slurm/start.sh failed:\n{proc.stdout}{proc.stderr}"
    # the plugin is a pinned extra (pip install -e ".[slurm]"): its absence fails, it does not skip
    import snakemake_executor_plugin_slurm  # noqa: F401


def _snakemake(work: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", TARGET, *args, *OVERLAYS, *ONE_MODEL]
    with open(work.parent / f"{work.name}.out", "w") as out:  # a file, not a pipe: neither run waits on a reader
        return subprocess.Popen(cmd, cwd=work, stdout=out, stderr=subprocess.STDOUT, text=True)


def _finished(proc: subprocess.Popen, work: Path) -> str:
    proc.wait()
    out = (work.parent / f"{work.name}.out").read_text()
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted(work.rglob("*.log")) if p.is_file())
        pytest.fail(f"snakemake {' '.join(proc.args[3:])} failed:\n{out[-6000:]}\n{logs[-12000:]}")
    return out


@pytest.fixture(scope="module")
def runs(slurm, request, tmp_path_factory):
    on_slurm = copy_repo(tmp_path_factory.mktemp("slurm") / "slurm")
    start = time.time()
    slurm_run = _snakemake(
        on_slurm, "--workflow-profile", "profiles/slurm", *SLURM_TEST_FLAGS, "--slurm-keep-successful-logs"
    )
    # while SLURM works: the local reference (built once for the whole run, by DVC)
    local = request.getfixturevalue("dvc_fast_pipeline")
    log = _finished(slurm_run, on_slurm)
    print(f"\npipeline through SLURM: {time.time() - start:.0f} s")
    dry = subprocess.run(
        [sys.executable, "-m", "snakemake", TARGET, "-n", "--forceall", "--quiet", "rules", *OVERLAYS, *ONE_MODEL],
        cwd=on_slurm,
        capture_output=True,
        text=True,
        check=True,
    )
    return local, on_slurm, log, dry.stdout + dry.stderr


def _job_counts(dry_run: str) -> dict[str, int]:
    """Jobs per rule, from Snakemake's dry-run table."""
    table = dry_run[dry_run.index("job ") : dry_run.index("total")]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_every_job_ran_as_a_slurm_job(runs):
    _, work, log, dry_run = runs
    submitted = SUBMITTED.findall(log)
    assert submitted, log[-3000:]
    slurm_ids = [sid for _, sid, _ in submitted]
    assert len(set(slurm_ids)) == len(slurm_ids)
    # every job of the DAG went to SLURM; the plugin files each job's log under rule_<name>/
    per_rule: dict[str, int] = {}
    for _, _, path in submitted:
        rule = Path(path).relative_to(work / ".snakemake/slurm_logs").parts[0].removeprefix("rule_")
        per_rule[rule] = per_rule.get(rule, 0) + 1
    expected = _job_counts(dry_run)
    assert per_rule == expected
    # each SLURM job wrote its log (the plugin names it after the SLURM job id), and it shows the jobstep's rule
    for _, sid, path in submitted:
        slurm_log = Path(path)
        assert slurm_log.name == f"{sid}.log" and slurm_log.is_file(), path
        assert re.search(r"^(?:rule|checkpoint) \w+:$", slurm_log.read_text(), re.M), path
    # and slurmctld knows them all, finished (it keeps finished jobs MinJobAge = 600 s: .ci/slurm/slurm.conf.in)
    states = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%T", "-j", ",".join(slurm_ids)], capture_output=True, text=True
    ).stdout
    seen = dict(line.split("|") for line in states.split())
    assert {sid: seen.get(sid) for sid in slurm_ids} == {sid: "COMPLETED" for sid in slurm_ids}


def test_scores_equal_a_local_run(runs):
    local, work, _, _ = runs
    here, there = json.loads((local / TARGET).read_text()), json.loads((work / TARGET).read_text())
    assert there["rouge1"] > 0  # not a comparison of zeros
    assert here == there
