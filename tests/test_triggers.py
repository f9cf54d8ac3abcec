"""What reruns, under either engine (docs/DVC.md): spec files whose content is the trigger, code dependencies that
match what a stage computes.

Fast: no stage depends on cli.py; predict/train/decode depend on no scorer, by the import scan and by what Python
really loads; in Snakemake's DAG a scorer change reaches only scoring jobs and what follows a selection.

Slow (`-m slow`; copies of the run's shared pipelines, tests/conftest.py: the fast config made by `dvc repro`,
the default config made by Snakemake): a real run after an edit of the ROUGE code runs no prediction (the
selections' choices are Snakemake checkpoints, decided by content) and keeps the summary; a `dvc repro` copy, a
`dvc pull` into a fresh clone and a Snakemake run, each followed, with no other command in between, by a
learning-rate change of one model (`dvc exp run` after the Snakemake run: the experiment is recorded, and
`dvc exp show` leads with the scores and the changed param); the jobs planned (or the stages rerun) are compared
with those computed from the DAG: the jobs reading a spec file whose content changes, and everything downstream of
them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KDSUM, TARGET, copy_built, dvc, git, git_commit_all, sh, smk
from test_dvc import _changed_by, load_yaml, lock_hashes, ran_stages

from kdsum.config.catalog import spec_for, spec_names
from kdsum.config.resolve import load_config
from kdsum.config.spec import to_json
from kdsum.training.report import SUMMARY_KEYS
from kdsum.workflow.deps import CODE_DIR, code_path, stage_code, write_code_files
from kdsum.workflow.dvc import SnakemakeJob, snakemake_jobs
from kdsum.workflow.specs import spec_path

ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p.stem.replace("_", "-") for p in (ROOT / "src/kdsum/stages").glob("*.py") if p.stem != "__init__")
GENERATING = ("predict", "train", "decode")  # GPU work a scorer change must not reach directly
SCORER = "src/kdsum/scoring/rouge.py"
CLI = "src/kdsum/cli.py"
LR_KEY = "models__tiny-llama__train__learning_rate"
LR = 0.05
SYNC_LINE = "run `kdsum sync-mtimes` first"


# ------------------------------------------------------------------------------------------------ the DAG
def downstream(jobs: list[SnakemakeJob], seeds: list[SnakemakeJob]) -> list[SnakemakeJob]:
    """``seeds`` and every job reading (a file under) an output of one of them, transitively."""
    out, todo = {id(j): j for j in seeds}, list(seeds)
    while todo:
        made = [p for paths in todo.pop().outputs.values() for p in paths]
        for job in jobs:
            if id(job) not in out and any(i == m or i.startswith(m + "/") for i in job.inputs for m in made):
                out[id(job)] = job
                todo.append(job)
    return list(out.values())


def runs(job: SnakemakeJob) -> set[str]:
    """The source files a job runs: those listed in its code file (its one code input)."""
    files = [i for i in job.inputs if i.startswith(f"{CODE_DIR}/")]
    assert len(files) == 1, (job.rule, files)
    return set(stage_code(Path(files[0]).stem))


def keys(jobs: list[SnakemakeJob]) -> set[frozenset]:
    """A job's identity: its outputs."""
    return {frozenset(p for paths in j.outputs.values() for p in paths) for j in jobs}


def changed_specs(work: Path, overrides: dict) -> set[str]:
    """The spec files whose content the overrides change (resolved here, not by the workflow)."""
    before = load_config(work / "config.yaml")
    after = load_config(work / "config.yaml", overrides)
    return {spec_path(n) for n in spec_names(before) if to_json(spec_for(before, n)) != to_json(spec_for(after, n))}


def expected_jobs(work: Path, changed_files: set[str]) -> list[SnakemakeJob]:
    """The jobs reading one of ``changed_files``, and everything downstream, in Snakemake's forced DAG."""
    jobs = snakemake_jobs("config.yaml", root=work)
    return downstream(jobs, [j for j in jobs if changed_files & set(j.inputs)])


def planned(text: str) -> set[frozenset]:
    """The jobs of a `snakemake -n` listing, by their outputs."""
    blocks = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n)*)", text, re.M)
    outs = [re.search(r"^\s+output: (.*)$", body, re.M) for rule, body in blocks if rule != "all"]
    return {frozenset(m.group(1).split(", ")) for m in outs if m}


# ------------------------------------------------------------------------------------------------ fast
def test_no_stage_depends_on_the_command_line_layer():
    assert "spec" in STAGES and "predict" in STAGES
    for stage in STAGES:
        assert CLI not in stage_code(stage), stage


def test_generating_stages_depend_on_no_scorer():
    for stage in GENERATING:
        files = stage_code(stage)
        assert f"src/kdsum/stages/{stage}.py" == files[0]
        assert not [f for f in files if f.startswith(("src/kdsum/scoring/", "src/kdsum/reporting/", CLI))], stage
    # what Python really loads for the stages lies within the scan (function-level imports aside)
    code = (
        "import json, sys; import kdsum.stages.predict, kdsum.stages.decode; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('kdsum'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = [m for m in json.loads(proc.stdout) if m.count(".") and not m.endswith("__init__")]
    scanned = {
        f.removeprefix("src/").removesuffix(".py").replace("/", ".")
        for s in ("predict", "decode")
        for f in stage_code(s)
    }
    assert not [m for m in loaded if m.startswith(("kdsum.scoring", "kdsum.reporting", "kdsum.cli"))], loaded
    packages = {m for m in loaded if (ROOT / "src" / m.replace(".", "/") / "__init__.py").is_file()}
    assert set(loaded) - packages <= scanned, sorted(set(loaded) - packages - scanned)


def test_a_code_file_lists_the_stage_code_with_hashes_and_moves_only_with_it(tmp_path):
    """A stage's code file names each file it runs with that file's sha256 (computed here), and is rewritten
    exactly when one of them changes: a preview writes the changed file aside, leaving results/code as it is."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    assert {"evaluate", "train"} <= set(write_code_files(tmp_path))
    listed = json.loads((tmp_path / code_path("evaluate")).read_text())["files"]
    assert list(listed) == stage_code("evaluate") and SCORER in listed
    assert listed[SCORER] == hashlib.sha256((ROOT / SCORER).read_bytes()).hexdigest()
    assert write_code_files(tmp_path) == {}
    (tmp_path / CLI).write_text("# an edit\n")
    assert write_code_files(tmp_path) == {}  # no stage runs cli.py
    (tmp_path / SCORER).write_bytes((ROOT / SCORER).read_bytes() + b"# an edit\n")
    before = (tmp_path / code_path("evaluate")).read_text()
    preview = write_code_files(tmp_path, preview=True)
    assert "evaluate" in preview and "train" not in preview and not preview["evaluate"].startswith(CODE_DIR)
    assert (tmp_path / code_path("evaluate")).read_text() == before
    assert "evaluate" in write_code_files(tmp_path) and "train" not in write_code_files(tmp_path)
    assert json.loads((tmp_path / code_path("evaluate")).read_text())["files"][SCORER] != listed[SCORER]


def test_a_scorer_change_reaches_scoring_and_what_follows_a_selection():
    """In the DAG of config.yaml: the jobs running the ROUGE code are scoring and selection jobs; downstream of
    them, a generating job only where it reads a selection's choice (a new scorer may choose another checkpoint or
    decoding setting). cli.py is no job's input."""
    jobs = snakemake_jobs("config.yaml", root=ROOT)
    readers = [j for j in jobs if SCORER in runs(j)]
    assert readers and not {j.rule for j in readers} & set(GENERATING)
    assert {"evaluate", "evaluate_decoding", "evaluate_report"} <= {j.rule for j in readers}
    for job in downstream(jobs, readers):
        if job.rule in GENERATING:
            assert [i for i in job.inputs if i.startswith("results/selection/")], (job.rule, job.wildcards)
    assert "train" not in {j.rule for j in downstream(jobs, readers)}
    zero_shot = [j for j in jobs if j.rule == "predict" and j.wildcards.get("variant") == "zeroshot"]
    assert zero_shot and not keys(zero_shot) & keys(downstream(jobs, readers))
    assert not [j for j in jobs if CLI in runs(j)]


# ------------------------------------------------------------------------------------------------ slow
def dry_run(work: Path, *args: str) -> subprocess.CompletedProcess:
    return smk(work, TARGET, "--dry-run", "--cores", "2", *args, check=False)


def assert_stops_naming_sync(proc: subprocess.CompletedProcess) -> None:
    lines = proc.stderr.strip().splitlines()  # Snakemake's own notes (its profile, --config) come first
    assert proc.returncode != 0 and SYNC_LINE in lines[-1], proc.stderr[-2000:]
    assert [line for line in lines if "sync-mtimes" in line or "Error" in line] == [lines[-1]], proc.stderr[-2000:]
    assert "Job stats" not in proc.stdout + proc.stderr


def assert_plans_exactly(work: Path, proc: subprocess.CompletedProcess, expected: list[SnakemakeJob]) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert planned(text) == keys(expected), {
        "unexpected": sorted(map(sorted, planned(text) - keys(expected))),
        "missing": sorted(map(sorted, keys(expected) - planned(text))),
    }


def lr_change_plan(work: Path) -> subprocess.CompletedProcess:
    return dry_run(work, "--config", f"{LR_KEY}={LR}")


def nothing_planned(work: Path) -> bool:
    proc = dry_run(work)
    return proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dvc_made(dvc_fast_pipeline, tmp_path_factory) -> Path:
    """The fast config's pipeline made by `dvc repro` (the run's shared one, copied), dvc.lock committed."""
    work = copy_built(dvc_fast_pipeline, tmp_path_factory.mktemp("triggers") / "dvc")
    git(work, "add", "dvc.lock")
    git(work, "commit", "-q", "-m", "dvc repro")
    return work


@pytest.fixture(scope="module")
def lr_expected(dvc_made) -> list[SnakemakeJob]:
    changed = changed_specs(dvc_made, {LR_KEY: LR})
    assert spec_path("model/tiny-llama/default") in changed and not [c for c in changed if "tiny-bart" in c]
    expected = expected_jobs(dvc_made, changed)
    assert "train" in {j.rule for j in expected} and all("tiny-bart" not in j.stage for j in expected)
    return expected


@pytest.mark.slow
def test_after_dvc_repro_a_learning_rate_change_stops_then_plans_exactly_its_jobs(dvc_made, lr_expected):
    before = {p: p.stat().st_mtime_ns for p in (dvc_made / "results/specs").rglob("*.json")}
    assert_stops_naming_sync(lr_change_plan(dvc_made))
    sh([*KDSUM, "sync-mtimes"], dvc_made)
    assert nothing_planned(dvc_made)
    assert_plans_exactly(dvc_made, lr_change_plan(dvc_made), lr_expected)
    # a preview changes no spec file: the next plain plan is still empty
    assert {p: p.stat().st_mtime_ns for p in (dvc_made / "results/specs").rglob("*.json")} == before
    assert nothing_planned(dvc_made)


@pytest.mark.slow
def test_after_dvc_pull_into_a_fresh_clone_the_same(dvc_made, lr_expected, tmp_path):
    remote = tmp_path / "remote"
    dvc(dvc_made, "remote", "add", "-d", "local", str(remote))
    dvc(dvc_made, "push")
    git(dvc_made, "commit", "-q", "-am", "a local remote")
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(dvc_made), str(clone)], tmp_path)
    dvc(clone, "pull")
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}
    assert_stops_naming_sync(lr_change_plan(clone))
    assert_stops_naming_sync(dry_run(clone))
    sh([*KDSUM, "sync-mtimes"], clone)
    assert nothing_planned(clone)
    assert_plans_exactly(clone, lr_change_plan(clone), lr_expected)


@pytest.fixture(scope="module")
def smk_made(default_pipeline, tmp_path_factory) -> Path:
    """The default pipeline made by Snakemake (the run's shared one, copied and committed to git), then recorded by
    DVC without running (`dvc commit`)."""
    work = copy_built(default_pipeline, tmp_path_factory.mktemp("triggers") / "smk")
    git_commit_all(work, "a snakemake run")  # results/ is ignored: the code and config only
    assert nothing_planned(work)
    dvc(work, "repro", "--single-item", "check_dag")  # DVC's own stage, nothing Snakemake runs
    dvc(work, "commit", "--force")
    git(work, "add", "dvc.lock")
    git(work, "commit", "-q", "-m", "snakemake run, recorded by dvc commit")
    return work


@pytest.mark.slow
def test_no_change_plans_nothing_under_either_engine(smk_made):
    assert json.loads(dvc(smk_made, "status", "--json").stdout) == {}
    proc = dvc(smk_made, "repro")
    assert ran_stages(proc.stdout) == [] and "Data and pipelines are up to date." in proc.stdout
    sh([*KDSUM, "sync-mtimes"], smk_made)  # dvc.lock was written after Snakemake's run
    assert nothing_planned(smk_made)


@pytest.mark.slow
def test_a_scorer_change_plans_scoring_never_train_and_a_cli_change_nothing(smk_made):
    jobs = snakemake_jobs("config.yaml", root=smk_made)
    for path, readers in ((CLI, []), (SCORER, [j for j in jobs if SCORER in runs(j)])):
        file = smk_made / path
        saved, text = file.stat(), file.read_bytes()
        # an edit: Snakemake compares a small input's checksum with its record, so a touch alone would not do
        file.write_bytes(text + b"\n# an edit\n")
        try:
            proc = dry_run(smk_made)
        finally:
            file.write_bytes(text)
            os.utime(file, ns=(saved.st_atime_ns, saved.st_mtime_ns))
        if not readers:
            assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
            continue
        assert_plans_exactly(smk_made, proc, downstream(jobs, readers))
        assert not re.search(r"^rule train:", proc.stdout, re.M)


def ran_rules(output: str) -> list[str]:
    """The rules a Snakemake run executed (checkpoints included), from its log."""
    return re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):$", output, re.M)


@pytest.mark.slow
def test_a_scorer_change_runs_no_prediction_and_keeps_the_summary(smk_made, tmp_path):
    """A real run after an edit of the ROUGE code, on a copy of the finished run: the scoring and selection jobs
    run; their choices come out the same, so no predict or decode job runs (the choices are Snakemake
    checkpoints: their readers are decided again, by the choice's content), and the summaries stay the same."""
    work = tmp_path / "copy"
    shutil.copytree(smk_made, work, symlinks=True)  # mtimes kept: Snakemake sees the finished run
    sh([*KDSUM, "sync-mtimes"], work)  # dvc.lock was written after Snakemake's run
    # what predict and baseline write (MBR is a selection by ROUGE, a submission reformats: both may rerun)
    made = sorted((work / "results/predictions").rglob("*.csv"))
    predictions = [p for p in made if p.name != "submission.csv" and p.parent.parent.name != "ensemble"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in [*predictions, work / TARGET]}
    assert [p for p in predictions if "/tiny-bart/default/" in str(p)]
    (work / SCORER).write_bytes((work / SCORER).read_bytes() + b"\n# an edit\n")
    proc = smk(work, TARGET, "--cores", "2")
    ran = ran_rules(proc.stdout + proc.stderr)
    assert {"evaluate", "select_checkpoint", "select_decoding", "summary"} <= set(ran), ran
    assert not set(ran) & set(GENERATING), ran
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in predictions} == {p: before[p] for p in predictions}
    assert (work / TARGET).read_bytes() == before[work / TARGET][1]
    assert nothing_planned(work)


@pytest.mark.slow
def test_after_a_snakemake_run_dvc_exp_run_reruns_exactly_that_models_stages(smk_made):
    expected = expected_jobs(smk_made, changed_specs(smk_made, {LR_KEY: LR}))
    before = lock_hashes(load_yaml(smk_made / "dvc.lock"))
    proc = dvc(smk_made, "exp", "run", "-S", f"config.yaml:models.tiny-llama.train.learning_rate={LR}")
    ran = ran_stages(proc.stdout)
    # DVC reruns a stage whose recorded deps or params changed content: those are the DAG's jobs downstream of the
    # changed spec files (fewer only where an output came out byte-identical, which stops DVC there), each once
    assert set(ran) == _changed_by(before, lock_hashes(load_yaml(smk_made / "dvc.lock"))), ran
    assert len(ran) == len(set(ran))
    assert (
        {"check_dag", "specs", "train_tiny-llama_default", "summary"}
        <= set(ran)
        <= {"check_dag", "specs"} | {j.stage for j in expected}
    ), ran
    assert not [n for n in ran if "tiny-bart" in n or "zeroshot" in n], ran
    assert json.loads((smk_made / spec_path("model/tiny-llama/default")).read_text())["train"]["learning_rate"] == LR
    assert load_yaml(smk_made / "config.yaml")["models"]["tiny-llama"]["train"]["learning_rate"] == LR
    params = load_yaml(smk_made / "dvc.lock")["stages"]["specs"]["params"]["config.yaml"]
    assert params["models.tiny-llama"]["train"]["learning_rate"] == LR
    # the experiment is recorded (an exp ref on the commit) with its params and metrics
    exps = [
        r["data"]
        for commit in json.loads(dvc(smk_made, "exp", "show", "--json").stdout)
        for e in commit.get("experiments") or []
        for r in e["revs"]
    ]
    assert [x["params"]["config.yaml"]["data"]["models"]["tiny-llama"]["train"]["learning_rate"] for x in exps] == [LR]
    assert "results/scores/tiny-llama/default/dev_metrics.json" in exps[0]["metrics"]
    assert json.loads(dvc(smk_made, "status", "--json").stdout) == {}
    # Snakemake follows: its params record is refreshed by the documented step, then nothing to do
    sh([*KDSUM, "sync-mtimes"], smk_made)
    assert nothing_planned(smk_made)


@pytest.mark.slow
def test_exp_show_leads_with_scores_and_the_changed_param(smk_made):
    """After the experiment above: the metrics are only the scores and training summaries, so `dvc exp show` starts
    with them (no data or build statistics), and --only-changed keeps the changed param and the moved scores."""
    header = next(csv.reader(io.StringIO(dvc(smk_made, "exp", "show", "--csv").stdout)))
    metrics = [c for c in header if c.startswith("results/") and ":" in c]
    first = header.index(metrics[0])
    assert header[:first] == ["Experiment", "rev", "typ", "Created", "parent"]
    assert header[first : first + len(metrics)] == metrics  # metrics lead, then params, then deps
    assert {c.split(":")[0].rsplit("/", 1)[1] for c in metrics} == {"dev_metrics.json", "train_summary.json"}
    assert header[first].endswith("/dev_metrics.json:final")
    scores = [c for c in metrics if "/scores/" in c]
    declared = [m for st in load_yaml(smk_made / "dvc.yaml")["stages"].values() for m in st.get("metrics", [])]
    n_scored = sum(m.endswith("/dev_metrics.json") for m in declared)
    assert len(scores) == 4 * n_scored and len(metrics) == len(scores) + (len(declared) - n_scored) * len(SUMMARY_KEYS)
    changed = next(csv.reader(io.StringIO(dvc(smk_made, "exp", "show", "--csv", "--only-changed").stdout)))
    moved = [c for c in changed if ":" in c]
    # the changed model's scores moved and the other model's did not; the changed param follows the metrics
    assert "results/scores/tiny-llama/default/dev_metrics.json:final" in moved
    assert not [c for c in moved if "tiny-bart" in c], moved
    assert changed[changed.index(moved[-1]) + 1] == "models.tiny-llama.train.learning_rate"
    spec = json.loads(dvc(smk_made, "plots", "show", "--json").stdout)
    assert set(spec["data"]) == {"training_loss", "results/summary.csv"} and not spec.get("errors")
