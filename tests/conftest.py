"""Fixtures and helpers shared by the test files: repo copies, and pipelines built once per test run.

Tiers (markers registered in pyproject.toml): the default selection (`python -m pytest`) is the fast unit tier;
`slow` (whole pipelines under Snakemake / DVC), `cluster` (SLURM), `integration` (../shared) and `gpu` run with
`-m ""` or their own `-m`, as .ci/run does.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "src"))
from kdsum.config.files import merged_config  # noqa: E402 (after the path set-up above)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a test that tries to download must fail loudly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # each xdist worker gets its share of the cores for torch, in the tests (tests/test_training.py,
    # test_templates.py) and in the stages they start (`dvc repro` passes no thread count): OpenMP threads beyond
    # the cores slow the tiny models down many times over
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = str(max(1, cores // int(workers)))
    os.environ.setdefault("KDSUM_TEST_THREADS", share)
    os.environ.setdefault("OMP_NUM_THREADS", share)
    if share == "1":  # and in the jobs a Snakemake run starts, which sets OMP_NUM_THREADS to a rule's threads
        os.environ.setdefault("SNAKEMAKE_PROFILE", str(ROOT / "tests" / "fixtures" / "profile-shared-cores"))
FAST = "tests/fixtures/config.fast.yaml"  # the end-to-end tests' overlay: the default shape, tiny models
TARGET = "results/summary.csv"
KDSUM = [sys.executable, "-m", "kdsum"]
GIT_ENV = {
    "GIT_AUTHOR_NAME": "kdsum-test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "kdsum-test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (a user's clone has no ../shared)")
    return SHARED_DATA


def copy_repo(dst: Path, src: Path = ROOT) -> Path:
    """A fresh checkout in ``dst``: the tracked and untracked-but-not-ignored files of ``src`` (no results/, no
    caches)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, capture_output=True, check=True
    )
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    return dst


def git_commit_all(work: Path, message: str) -> None:
    """Commit every file of ``work`` (a new repository if it is none yet): DVC experiments need a commit."""
    env = {**os.environ, **GIT_ENV}
    if not (work / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=work, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=work, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=work, env=env, check=True)


def copy_built(src: Path, dst: Path) -> Path:
    """A private copy of a built pipeline, mtimes and Snakemake's records kept, for a test that changes it."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(dir)`` once per test run however many xdist workers ask for it: the first one builds under a file
    lock, the others wait and get the same directory. Read it only; ``copy_built`` it to change it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's temp root, common to its workers (not to other runs)
    work, done = shared / name, shared / f"{name}.done"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            _build_or_record(build, work, done)
    if failure := done.read_text(encoding="utf-8"):
        pytest.fail(f"building {name} failed (once for the whole run):\n{failure}")
    return work


def _build_or_record(build: Callable[[Path], None], work: Path, done: Path) -> None:
    try:
        build(work)
    except BaseException as exc:  # a failed build fails every test that needs it, without a second try
        done.write_text(f"{type(exc).__name__}: {exc}"[-20000:] or "failed", encoding="utf-8")
        raise
    done.write_text("", encoding="utf-8")


DVC_ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **GIT_ENV}


def sh(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=DVC_ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` failed ({proc.returncode}) in {cwd}:\n"
            f"{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], cwd, check)


def smk(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "snakemake", *args], cwd, check)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(["git", *args], cwd)


def committed_copy(dst: Path) -> Path:
    """A fresh checkout in ``dst`` (no results/, no cache), committed to a new git repository (DVC experiments
    need a commit)."""
    work = copy_repo(dst)
    git_commit_all(work, "copy")
    return work


def fast_copy(dst: Path) -> Path:
    """A copy whose config.yaml is the fast config (DVC's params file is one file), dvc.yaml derived for it."""
    work = committed_copy(dst)
    merged = merged_config([ROOT / "config.yaml", ROOT / FAST])
    (work / "config.yaml").write_text(yaml.safe_dump(merged, allow_unicode=True, sort_keys=False), encoding="utf-8")
    sh([*KDSUM, "dvc-yaml"], work)
    git(work, "commit", "-q", "-am", "the fast config, and dvc.yaml derived for it")
    return work


def run_snakemake(work: Path, *args: str, timeout: int = 3600) -> float:
    """``snakemake *args`` in ``work``; fails the test with the job logs if it fails. Returns the wall time."""
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=work, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        logs = "\n".join(f"== {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "results/logs").rglob("*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stderr[-5000:]}\n{logs[-20000:]}")
    return time.time() - start


def _build_default_pipeline(work: Path) -> None:
    copy_repo(work)
    wall = run_snakemake(work, "--cores", "2", "results/summary.csv")
    (work.parent / f"{work.name}.wall").write_text(f"{wall:.1f}", encoding="utf-8")


@pytest.fixture(scope="session")
def default_pipeline(tmp_path_factory) -> Path:
    """A fresh copy of the repo after `snakemake --cores 2 results/summary.csv` on config.yaml, built once per test
    run and shared: read it only (``copy_built`` it to change it)."""
    work = built_once(tmp_path_factory, "default-pipeline", _build_default_pipeline)
    print(f"\nfull default pipeline: {(work.parent / 'default-pipeline.wall').read_text()} s")
    return work


def _build_dvc_fast_pipeline(work: Path) -> None:
    fast_copy(work)
    start = time.perf_counter()
    proc = dvc(work, "repro")
    (work.parent / f"{work.name}.wall").write_text(f"{time.perf_counter() - start:.1f}", encoding="utf-8")
    (work.parent / f"{work.name}.repro.log").write_text(proc.stdout, encoding="utf-8")


@pytest.fixture(scope="session")
def dvc_fast_pipeline(tmp_path_factory) -> Path:
    """A committed copy whose config.yaml is the fast config, after one full `dvc repro` (dvc.lock not committed),
    built once per test run and shared: read it only (``copy_built`` it to change it). Its first repro's output is
    ``<dir>.repro.log`` beside it, the wall time ``<dir>.wall``."""
    return built_once(tmp_path_factory, "dvc-fast-pipeline", _build_dvc_fast_pipeline)


# The heaviest files first, so that the two CI workers (`--dist loadfile --no-loadscope-reorder`, .ci/run) start
# the shared pipelines at once and the light files fill the gaps: the longest jobs first keeps the end balanced.
HEAVY_FIRST = ("test_pipeline.py", "test_dvc.py", "test_real_models.py", "test_slurm.py", "test_triggers.py")
END_TO_END = {"slow", "cluster", "integration", "gpu"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def _cpu_seconds() -> float:
    """CPU time of this process and of every child it has waited for (Snakemake, DVC and their jobs)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's CPU seconds ride on its report (``cpu_s``): on 2 cores, CPU, not wall time, is what CI spends."""
    report = yield
    report.user_properties.append(("cpu_s", round(_cpu_seconds() - item.stash.get(_CPU_START, 0.0), 2)))
    item.stash[_CPU_START] = _cpu_seconds()
    return report


_CPU_START = pytest.StashKey[float]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    item.stash[_CPU_START] = _cpu_seconds()


def _cpu_of(report) -> float:
    return dict(getattr(report, "user_properties", ())).get("cpu_s", 0.0)


def pytest_terminal_summary(terminalreporter) -> None:
    """Test and CPU time per tier (setup, call and teardown summed over the tests of each), and the phases that
    took the most CPU, for CI's log."""
    tiers: dict[str, list[float]] = {}
    phases = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) not in ("setup", "call", "teardown"):
                continue
            tier = "end-to-end" if END_TO_END & set(report.keywords) else "unit"
            count, seconds, cpu = tiers.setdefault(tier, [0, 0.0, 0.0])
            tiers[tier] = [count + (report.when == "call"), seconds + report.duration, cpu + _cpu_of(report)]
            phases.append((_cpu_of(report), report.duration, report.when, report.nodeid))
    for tier, (count, seconds, cpu) in sorted(tiers.items()):
        terminalreporter.write_line(f"tier {tier}: {count} tests, {seconds:.0f} s of test time, {cpu:.0f} CPU-s")
    terminalreporter.write_sep("=", "most CPU (setup of a shared pipeline counts where it was built)")
    for cpu, seconds, when, nodeid in sorted(phases, reverse=True)[:15]:
        terminalreporter.write_line(f"{cpu:7.1f} CPU-s {seconds:7.1f} s {when:8s} {nodeid}")
