"""DVC as a front door of the pipeline (docs/DVC.md): dvc.yaml is derived from the Snakemake rules.

Fast tests (no pipeline run, a few seconds each):
* dvc.yaml is current (`kdsum dvc-yaml --check`), and a stale dvc.yaml or export/dvc.yaml is refused in one line
  naming the command; export/dvc.yaml (`--exports`) holds one export stage per trained (model, variant), run from
  the root;
* DVC and Snakemake describe the same pipeline: the outputs of `snakemake --forceall -n` and of `dvc dag --outs`,
  the shell commands (minus Snakemake's ` > log 2>&1`; the spec stages read config.yaml themselves under DVC) and
  each stage's deps (code files included) agree, for config.yaml and for the fast test config;
* params live on the spec stages only and are scoped (a hyperparameter of one model reaches that model's specs);
* outputs, metrics and plots are what DVC should track; the DAG pictures (rules/dag.smk) render.

Slow tests (`-m slow`; a copy of the run's fast pipeline made by one full `dvc repro`, tests/conftest.py):
every stage ran, a no-op second repro, metrics and plots, Snakemake agreeing after DVC (`kdsum sync-mtimes`),
push/pull through a local remote, an edit of one training summary (exactly the stages whose inputs changed rerun),
a model added to run.models (`dvc repro` stops first, naming `kdsum dvc-yaml`), and one export run by naming its
stage in export/dvc.yaml (a plain `dvc repro` runs none). `dvc exp run -S` on one model's
learning rate is in tests/test_triggers.py.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import DVC_ENV as ENV
from conftest import FAST, KDSUM, TARGET, committed_copy, copy_built, dvc, git, sh, smk

from kdsum.config.catalog import spec_for, spec_keys, spec_names
from kdsum.config.files import merged_config
from kdsum.config.resolve import load_config
from kdsum.config.spec import to_json

ROOT = Path(__file__).resolve().parents[1]
RULES = [
    "ingest",
    "format_prompts",
    "build_base",
    "train",
    "predict",
    "baseline",
    "submission",
    "mbr",
    "evaluate",
    "select_checkpoint",
    "decode",
    "evaluate_decoding",
    "select_decoding",
    "evaluate_report",
    "best_submission",
    "summary",
]
TWO_WORD_RULES = (
    "build_base",
    "format_prompts",
    "select_checkpoint",
    "evaluate_decoding",
    "select_decoding",
    "evaluate_report",
    "best_submission",
)
DVC_OWN = ("check_dag", "specs")  # stages of DVC's own: the DAG check and the one spec command
FIGURES: dict[str, float | int | list] = {}  # measured figures, printed at the end of the module (pytest -s)


# ------------------------------------------------------------------------------------------------ helpers
def ran_stages(output: str) -> list[str]:
    return re.findall(r"^Running stage '([^']+)'", output, re.M)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def dvc_outputs(stage: dict) -> list[str]:
    """outs + metrics + plots of a dvc.yaml stage, as paths."""
    paths = []
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def dvc_dag_outs(cwd: Path) -> set[str]:
    """The nodes of `dvc dag --outs --dot dvc.yaml`: every output, metric and plot file of the pipeline (not of the
    exports downstream, in export/dvc.yaml)."""
    dot = dvc(cwd, "dag", "--outs", "--dot", "dvc.yaml").stdout
    return set(re.findall(r'^"([^"]+)";$', dot, re.M))


def snakemake_jobs(cwd: Path, *args: str) -> list[dict]:
    """Jobs of `snakemake --forceall -n -p results/summary.csv`: rule, input, output, log, shell command."""
    out = smk(cwd, TARGET, "--forceall", "--dry-run", "--printshellcmds", *args).stdout
    jobs: list[dict] = []
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append({"rule": m.group(1), "input": [], "output": [], "log": [], "cmd": None})
        elif jobs and (m := re.match(r"^\s+(input|output|log): (.*)$", line)):
            jobs[-1][m.group(1)] = m.group(2).split(", ")
        elif jobs and line.startswith("Shell command: "):
            jobs[-1]["cmd"] = line.removeprefix("Shell command: ").strip()
    jobs = [j for j in jobs if j["rule"] != "all"]
    assert jobs, f"no jobs parsed from the dry run:\n{out[-3000:]}"
    missing = [j["rule"] for j in jobs if j["cmd"] is None]
    assert not missing, f"no shell command parsed for {missing}:\n{out[-3000:]}"
    return jobs


def without_log(job: dict) -> str:
    """Snakemake's command minus the ` > {log} 2>&1` that the rules add (DVC runs the command bare)."""
    suffix = f" > {job['log'][0]} 2>&1"
    assert len(job["log"]) == 1 and job["cmd"].endswith(suffix), (job["rule"], job["cmd"])
    return job["cmd"][: -len(suffix)]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree_md5(path: Path) -> dict[str, str]:
    """The directory's files by content; Snakemake's `.snakemake_timestamp` marker aside (.dvcignore lists it)."""
    files = (p for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".snakemake_timestamp")
    return {p.relative_to(path).as_posix(): md5(p) for p in files}


def lock_hashes(lock: dict) -> dict[str, dict]:
    """stage -> {dep path: md5, params file: params} from dvc.lock."""
    out = {}
    for name, st in lock["stages"].items():
        deps = {d["path"]: d.get("md5") for d in st.get("deps", [])}
        deps.update({f"params:{f}": v for f, v in st.get("params", {}).items()})
        out[name] = deps
    return out


def pipeline_status(cwd: Path) -> dict:
    """`dvc status dvc.yaml`: the pipeline's stages; a repo-wide `dvc status` also lists each export of
    export/dvc.yaml not run yet."""
    return json.loads(dvc(cwd, "status", "dvc.yaml", "--json").stdout)


def nothing_to_do(cwd: Path, *args: str) -> tuple[bool, str, float]:
    start = time.perf_counter()
    proc = smk(cwd, TARGET, "--dry-run", *args)
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    return "Nothing to be done" in text, text, wall


def assert_stops_naming_sync(cwd: Path) -> None:
    proc = smk(cwd, TARGET, "--dry-run", check=False)
    assert proc.returncode != 0 and "run `kdsum sync-mtimes` first" in proc.stderr, proc.stderr[-2000:]


def planned_jobs(text: str) -> int:
    m = re.search(r"^total\s+(\d+)", text, re.M)
    return int(m.group(1)) if m else 0


# ------------------------------------------------------------------------------------------------ fast tests
def test_dvc_yaml_is_derived_and_current():
    proc = subprocess.run([*KDSUM, "dvc-yaml", "--check"], cwd=ROOT, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr + "\nrun `kdsum dvc-yaml` and commit dvc.yaml"
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8").startswith("# GENERATED from the Snakemake rules")
    # exports are asked for (--exports): a project that never exports has no stage a bare `dvc pull` would miss
    assert not (ROOT / "export/dvc.yaml").exists()


def test_check_refuses_a_stale_file_in_one_line(tmp_path):
    out, exports = tmp_path / "dvc.yaml", tmp_path / "export/dvc.yaml"
    gen = [*KDSUM, "dvc-yaml", "--out", str(out)]
    assert subprocess.run([*gen, "--exports"], cwd=ROOT, capture_output=True, env=ENV).returncode == 0
    assert subprocess.run(gen + ["--check"], cwd=ROOT, capture_output=True, env=ENV).returncode == 0
    for path, stage in ((out, "summary"), (exports, "export_tiny-bart_default")):
        good = path.read_text(encoding="utf-8")
        path.write_text(good.replace(f"  {stage}:\n", f"  {stage}_old:\n"), encoding="utf-8")
        proc = subprocess.run(gen + ["--check"], cwd=ROOT, capture_output=True, text=True, env=ENV)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"error: {path} does not match") and "kdsum dvc-yaml" in lines[0], lines[0]
        path.write_text(good, encoding="utf-8")


def _trained(stages: dict) -> set[tuple[str, str]]:
    """(model, variant) of every train stage, from its model directory out."""
    outs = [o for name, st in stages.items() if name.startswith("train_") for o in dvc_outputs(st)]
    return {tuple(o.split("/")[2:4]) for o in outs if re.fullmatch(r"results/train/[^/]+/[^/]+/model", o)}


def test_export_file_has_one_stage_per_trained_system(tmp_path):
    """export/dvc.yaml (`kdsum dvc-yaml --exports`): the export of each (model, variant) that dvc.yaml trains, run
    from the repository root; none in dvc.yaml, so a plain `dvc repro` never runs one."""
    out = tmp_path / "dvc.yaml"
    sh([*KDSUM, "dvc-yaml", "--out", str(out), "--exports"], ROOT)
    stages = load_yaml(ROOT / "dvc.yaml")["stages"]
    assert load_yaml(out)["stages"] == stages
    exports = load_yaml(tmp_path / "export/dvc.yaml")["stages"]
    trained = _trained(stages)
    assert len(trained) >= 2 and not [n for n in stages if n.startswith("export")]
    assert len(exports) == len(trained)
    systems = set()
    for name, stage in exports.items():
        (out,) = stage["outs"]
        model, variant = out.removeprefix("results/export/").split("/")
        systems.add((model, variant))
        assert stage["wdir"] == ".." and stage["cmd"].startswith("kdsum export "), (name, stage)
        assert f"results/train/{model}/{variant}/model" in stage["deps"], (name, stage["deps"])
        assert f"--out {out}" in stage["cmd"] and "zeroshot" not in name
    assert systems == trained


@pytest.fixture(scope="module")
def structure_copy(tmp_path_factory) -> Path:
    """A copy of the repo, no results: the dry runs and `dvc dag` run there, never in the working tree."""
    return committed_copy(tmp_path_factory.mktemp("structure") / "kdsum")


@pytest.fixture(scope="module", params=["config.yaml", FAST])
def both_doors(request, structure_copy) -> dict:
    """dvc.yaml stages, `dvc dag --outs` and the Snakemake dry-run jobs of one config."""
    if request.param == FAST:
        merged = merged_config([ROOT / "config.yaml", ROOT / FAST])
        (structure_copy / "config.yaml").write_text(yaml.safe_dump(merged, allow_unicode=True), encoding="utf-8")
        sh([*KDSUM, "dvc-yaml"], structure_copy)
        sh([*KDSUM, "spec", "--configfile", "config.yaml"], structure_copy)  # what DVC's specs stage runs
    doc = load_yaml(structure_copy / "dvc.yaml")
    return {
        "config": request.param,
        "stages": doc["stages"],
        "plots": doc.get("plots", []),
        "dag_outs": dvc_dag_outs(structure_copy),
        "jobs": snakemake_jobs(structure_copy),
        "cfg": load_config(structure_copy / "config.yaml"),
    }


def _dvc_only(stages: dict) -> dict:
    return {n: st for n, st in stages.items() if n not in DVC_OWN}


def test_same_outputs(both_doors):
    smk_outs = [o for j in both_doors["jobs"] for o in j["output"]]
    stages = _dvc_only(both_doors["stages"])
    dvc_outs = [o for st in stages.values() for o in dvc_outputs(st)]
    assert len(smk_outs) == len(set(smk_outs)) and len(dvc_outs) == len(set(dvc_outs))
    spec_outs = set(dvc_outputs(both_doors["stages"]["specs"]))
    assert set(smk_outs) | spec_outs | {"results/specs/dag.txt"} == both_doors["dag_outs"], {
        "only snakemake": sorted(set(smk_outs) - both_doors["dag_outs"]),
        "only dvc dag": sorted(both_doors["dag_outs"] - set(smk_outs)),
    }
    assert set(dvc_outs) == set(smk_outs)
    assert len(both_doors["jobs"]) == len(stages)
    assert {j["rule"] for j in both_doors["jobs"]} == set(RULES)


def test_same_commands(both_doors):
    """Every stage runs its rule's command; the specs stage runs the one spec command on config.yaml."""
    by_outs = {frozenset(dvc_outputs(st)): (name, st) for name, st in _dvc_only(both_doors["stages"]).items()}
    for job in both_doors["jobs"]:
        name, st = by_outs[frozenset(job["output"])]
        assert st["cmd"] == without_log(job), name
    assert both_doors["stages"]["specs"]["cmd"] == "kdsum spec --configfile config.yaml"
    assert Counter(j["rule"] for j in both_doors["jobs"]) == Counter(
        n.split("_")[0] if not n.startswith(TWO_WORD_RULES) else "_".join(n.split("_")[:2])
        for n in _dvc_only(both_doors["stages"])
    )


def test_same_deps_code_included(both_doors, structure_copy):
    """Each stage lists exactly its job's inputs: the pipeline files it consumes and its one code file, which lists
    the code it runs (the stage module and every kdsum module it imports), so a code edit reruns the same stages
    under both engines."""
    by_outs = {frozenset(dvc_outputs(st)): (name, st) for name, st in _dvc_only(both_doors["stages"]).items()}
    runs = {}
    chosen = {
        o for j in both_doors["jobs"] if j["rule"] in ("select_checkpoint", "select_decoding") for o in j["output"]
    }
    for job in both_doors["jobs"]:
        name, st = by_outs[frozenset(job["output"])]
        smk_in, dvc_in = set(job["input"]), set(st["deps"])
        if "<TBD>" in smk_in:  # an input a dry run learns only once a Snakemake checkpoint (a selection) has run
            assert smk_in - dvc_in == {"<TBD>"} and dvc_in - smk_in and dvc_in - smk_in <= chosen, name
        else:
            assert dvc_in == smk_in, (name, dvc_in ^ smk_in)
        stage = {"format_prompts": "prompts", "evaluate_report": "evaluate", "evaluate_decoding": "evaluate"}.get(
            job["rule"], job["rule"]
        )
        code = [d for d in st["deps"] if d.startswith("results/code/")]
        assert code == [f"results/code/{stage.replace('_', '-')}.json"] and not [
            d for d in st["deps"] if d.startswith("src/")
        ]
        runs[name] = json.loads((structure_copy / code[0]).read_text(encoding="utf-8"))["files"]
        assert f"src/kdsum/stages/{stage}.py" in runs[name], name
        assert "src/kdsum/cli.py" not in runs[name] and "src/kdsum/__init__.py" not in runs[name], name
    predict = next(files for n, files in runs.items() if n.startswith("predict_"))
    assert {"src/kdsum/generation/predict.py", "src/kdsum/config/spec.py"} <= set(predict)
    assert "src/kdsum/config/resolve.py" not in predict  # stages read their spec, never the config
    assert "src/kdsum" in both_doors["stages"]["specs"]["deps"]  # the code files' writer reruns on any code change


def test_every_stage_but_the_specs_is_free_of_config(both_doors):
    for name, st in both_doors["stages"].items():
        if name == "specs":
            assert "results/specs/dag.txt" in st["deps"], name
        elif name != "check_dag":
            assert "params" not in st and "config.yaml" not in st["cmd"], name
    assert both_doors["stages"]["check_dag"]["deps"][0] == "config.yaml"


def _stage_params(stage: dict) -> list[str]:
    return [k for entry in stage.get("params", []) for keys in entry.values() for k in keys]


def test_params_are_scoped_to_one_model(both_doors):
    """Only the specs stage reads config.yaml, every key a spec reads among its params; a hyperparameter of one
    model changes exactly that model's spec files (so DVC reruns exactly the stages reading them)."""
    cfg, stages = both_doors["cfg"], both_doors["stages"]
    assert [n for n, st in stages.items() if "params" in st] == ["specs"]
    params = _stage_params(stages["specs"])
    for name in spec_names(cfg):
        for key in spec_keys(cfg, name):
            assert any(key == k or key.startswith(k + ".") for k in params), (name, key)
    for model in cfg["run"]["models"]:
        changed = copy.deepcopy(cfg)
        changed["models"][model]["train"]["learning_rate"] = 0.05
        hit = {n for n in spec_names(cfg) if to_json(spec_for(cfg, n)) != to_json(spec_for(changed, n))}
        expected = {f"model/{model}/{v}" for v in cfg["run"]["variants"]}  # zero-shot reads no lr
        # the decoding search's jobs are the model's job with other generation settings
        expected |= {f"decode/{model}/{v}/{d}" for v in cfg["run"]["variants"] for d in cfg["decoding"]["grid"]}
        assert hit == expected, model
    for st in stages.values():
        assert all(list(entry) == ["config.yaml"] for entry in st.get("params", []))


def test_code_deps_scan(tmp_path):
    """The import scan: function-level, `from kdsum import x`, relative and transitive imports."""
    from kdsum.workflow.deps import code_deps

    (tmp_path / "src/kdsum").mkdir(parents=True)
    (tmp_path / "src/kdsum/__init__.py").write_text("")
    (tmp_path / "src/kdsum/a.py").write_text("from .b import x\n")
    (tmp_path / "src/kdsum/b.py").write_text("from kdsum import c\nx = 1\n")
    (tmp_path / "src/kdsum/c.py").write_text("import json\n")
    (tmp_path / "src/kdsum/unused.py").write_text("")
    (tmp_path / "src/kdsum/s.py").write_text("import sys\n\ndef main():\n    from kdsum.a import x\n")
    assert code_deps("src/kdsum/s.py", tmp_path) == [
        "src/kdsum/s.py",
        "src/kdsum/a.py",
        "src/kdsum/b.py",
        "src/kdsum/c.py",
    ]


def test_outputs_metrics_and_plots_are_what_dvc_should_track():
    from kdsum.config.resolve import grid

    doc = load_yaml(ROOT / "dvc.yaml")
    stages = doc["stages"]
    outs = [o for st in stages.values() for o in dvc_outputs(st)]
    # intermediate trainer checkpoints, logs and benchmarks are never outputs; the final model dirs are
    assert not [o for o in outs if o.startswith(("results/checkpoints", "results/logs", "results/benchmarks"))]
    jobs = grid(load_config(ROOT / "config.yaml"))
    assert {o for o in outs if o.endswith("/model") and not o.startswith("results/selection/")} == {
        f"results/train/{m}/{v}/model" for m, v in jobs
    }
    metrics = [next(iter(m)) if isinstance(m, dict) else m for st in stages.values() for m in st.get("metrics", [])]
    assert metrics and all(m.endswith(".json") for m in metrics)
    # only scores and training summaries are metrics: statistics and diagnostics are plain outs
    scored = {o for o in outs if re.fullmatch(r"results/scores/[^/]+/[^/]+/dev\.json", o)}  # scores and CIs
    assert {f"results/scores/{m}/{v}/dev.json" for m, v in jobs} <= scored
    scores = {o.replace(".json", "_metrics.json") for o in scored}
    summaries = {f"results/train/{m}/{v}/train_summary.json" for m, v in jobs}
    assert set(metrics) == scores | summaries
    for plain in ("results/data/stats.json", *(f"results/train/{m}/{v}/train_metrics.json" for m, v in jobs)):
        assert plain in outs and plain not in metrics
    assert {f"results/train/{m}/{v}/tracking" for m, v in jobs} <= set(outs)  # DVCLive's folder is declared
    for name, st in stages.items():  # every output is cached: results/ is git-ignored
        for key in ("outs", "metrics"):
            assert all(isinstance(e, str) for e in st.get(key, [])) or name in DVC_OWN, st
    assert stages["check_dag"]["outs"] == [{"results/specs/dag.txt": {"persist": True}}]
    # cached, and kept in place during the run: only a spec whose content changed is rewritten
    assert all(list(e.values()) == [{"persist": True}] for e in stages["specs"]["outs"])
    plots = {next(iter(p)): next(iter(p.values())) for p in doc["plots"]}
    assert set(plots["training_loss"]["y"]) == {f"results/train/{m}/{v}/log_history.csv" for m, v in jobs}
    assert plots["results/summary.csv"]["x"] == "final"
    for path in list(plots["training_loss"]["y"]) + ["results/summary.csv"]:
        assert path in outs  # drawn from a stage output, so it is versioned with the run


def test_dvcignore_keeps_snakemake_markers_out_of_hashes():
    assert ".snakemake_timestamp" in (ROOT / ".dvcignore").read_text(encoding="utf-8").split()


def test_rulegraph_in_docs_shows_every_rule():
    svg = (ROOT / "docs/rulegraph.svg").read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for rule in RULES:
        assert f">{rule}<" in svg, rule
    assert (ROOT / "docs/rulegraph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz (dot) is not installed")
def test_dag_rule_renders_pictures(tmp_path):
    """`snakemake --cores 1 dag` (rules/dag.smk) writes the rule graph (SVG, PNG) and the job DAG (SVG)."""
    work = committed_copy(tmp_path / "kdsum")
    smk(work, "--cores", "1", "dag")
    d = work / "results/dag"
    assert (d / "rulegraph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rulegraph = (d / "rulegraph.svg").read_text(encoding="utf-8")
    assert all(f">{rule}<" in rulegraph for rule in RULES)
    jobs = (d / "jobs.svg").read_text(encoding="utf-8")
    stages = load_yaml(ROOT / "dvc.yaml")["stages"]
    assert jobs.count('class="node"') == len(stages) - len(DVC_OWN)  # a node per job; DVC_OWN are DVC's own
    assert (work / "results/benchmarks/dag/results/dag.tsv").exists()
    assert (work / "results/logs/dag/results/dag.log").exists()


# ------------------------------------------------------------------------------------------------ slow: e2e
@pytest.fixture(scope="module")
def dvc_repo(dvc_fast_pipeline, tmp_path_factory) -> Path:
    """A private copy of the run's fast pipeline made by one full `dvc repro` (tests/conftest.py); these tests
    change it in turn."""
    work = copy_built(dvc_fast_pipeline, tmp_path_factory.mktemp("dvc") / "kdsum")
    log = dvc_fast_pipeline.parent / f"{dvc_fast_pipeline.name}.repro.log"
    (work / ".first_repro.log").write_text(log.read_text(encoding="utf-8"), encoding="utf-8")
    FIGURES["full dvc repro (fast config), s"] = float((log.with_suffix("").with_suffix(".wall")).read_text())
    FIGURES["stages run by the first repro"] = len(ran_stages(log.read_text(encoding="utf-8")))
    yield work
    print("\nmeasured figures:\n" + "\n".join(f"  {k}: {v}" for k, v in FIGURES.items()))


@pytest.mark.slow
def test_first_repro_runs_every_stage(dvc_repo):
    ran = ran_stages((dvc_repo / ".first_repro.log").read_text(encoding="utf-8"))
    stages = load_yaml(dvc_repo / "dvc.yaml")["stages"]
    assert sorted(ran) == sorted(stages)
    assert ran[0] == "check_dag" and ran[-1] == "summary"
    assert (dvc_repo / TARGET).exists()
    lock = load_yaml(dvc_repo / "dvc.lock")
    assert set(lock["stages"]) == set(stages)


@pytest.mark.slow
def test_second_repro_runs_nothing(dvc_repo):
    start = time.perf_counter()
    proc = dvc(dvc_repo, "repro")
    FIGURES["no-op dvc repro, s"] = round(time.perf_counter() - start, 1)
    assert ran_stages(proc.stdout) == []
    assert "Data and pipelines are up to date." in proc.stdout
    assert pipeline_status(dvc_repo) == {}


@pytest.mark.slow
def test_checkpoints_are_not_outputs_but_models_are_cached(dvc_repo):
    lock = load_yaml(dvc_repo / "dvc.lock")
    paths = [
        o["path"] for st in lock["stages"].values() for key in ("outs", "metrics", "plots") for o in st.get(key, [])
    ]
    assert not [p for p in paths if p.startswith("results/checkpoints")]
    for model_dir in ("results/train/tiny-bart/default/model", "results/train/tiny-llama/default/model"):
        out = next(o for st in lock["stages"].values() for o in st.get("outs", []) if o["path"] == model_dir)
        assert out["md5"].endswith(".dir")
        manifest = dvc_repo / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]
        entries = [e["relpath"] for e in json.loads(manifest.read_text())]
        assert entries and not [e for e in entries if "checkpoint-" in e], entries
    assert (dvc_repo / "results/train/tiny-llama/default/model/adapter_config.json").exists()  # LoRA adapters


@pytest.mark.slow
def test_metrics_and_plots(dvc_repo, tmp_path):
    metrics = json.loads(dvc(dvc_repo, "metrics", "show", "--json").stdout)
    data = metrics[""]["data"]
    score = data["results/scores/tiny-bart/default/dev_metrics.json"]["data"]
    assert list(score) == ["final", "rouge1", "rouge2", "rougeL"]
    full = json.loads((dvc_repo / "results/scores/tiny-bart/default/dev.json").read_text())
    assert score["final"] == pytest.approx(full["rouge_sum"] / 3) and score["rouge2"] == full["rouge2"]
    summary = {r["system"]: r for r in csv.DictReader(io.StringIO((dvc_repo / TARGET).read_text(encoding="utf-8")))}
    assert float(summary["tiny-bart/default"]["final"]) == pytest.approx(score["final"])  # the table's `final`
    assert "results/train/tiny-llama/default/train_summary.json" in data
    assert not [p for p in data if p.endswith(("stats.json", "train_metrics.json")) or p.startswith("results/base")]
    out = tmp_path / "plots"
    dvc(dvc_repo, "plots", "show", "-o", str(out))
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "Training loss" in html and "Final score per system (dev" in html
    spec = json.loads(dvc(dvc_repo, "plots", "show", "--json").stdout)
    assert set(spec["data"]) == {"training_loss", "results/summary.csv"} and not spec.get("errors")


def snakemake_mtime(path: Path) -> int:
    """A path's time as Snakemake reads it: a directory's is its `.snakemake_timestamp` marker's, where it has one."""
    marker = path / ".snakemake_timestamp"
    return (marker if path.is_dir() and marker.exists() else path).stat().st_mtime_ns


def inputs_newer_than_outputs(repo: Path) -> list[str]:
    """The pipeline stages of dvc.yaml with a dep under results/ newer than one of their outs: read from DVC's own
    description of each stage, independently of Snakemake (its plan would fall back to checksums there)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]

    def mtimes(entries):
        paths = [repo / (e if isinstance(e, str) else next(iter(e))) for e in entries]
        return [snakemake_mtime(p) for p in paths if p.exists() and p.relative_to(repo).parts[0] == "results"]

    late = []
    for name, stage in stages.items():
        if name in DVC_OWN:
            continue
        ins, outs = mtimes(stage.get("deps", [])), mtimes(stage.get("outs", []) + stage.get("metrics", []))
        if ins and outs and max(ins) > min(outs):
            late.append(name)
    return late


@pytest.mark.slow
def test_snakemake_agrees_after_dvc_run_and_lint_is_clean(dvc_repo):
    assert_stops_naming_sync(dvc_repo)  # right after dvc repro: the workflow stops before planning
    sync = sh([*KDSUM, "sync-mtimes"], dvc_repo)
    assert "nothing to be done" in sync.stdout
    assert inputs_newer_than_outputs(dvc_repo) == []  # every output touched in DAG order: no plan needs a checksum
    ok, text, wall = nothing_to_do(dvc_repo)
    assert ok, text[-3000:]
    FIGURES["no-op snakemake -n, s"] = round(wall, 1)
    start = time.perf_counter()
    run = smk(dvc_repo, TARGET, "--cores", "1")
    FIGURES["no-op snakemake run, s"] = round(time.perf_counter() - start, 1)
    assert "Nothing to be done" in run.stdout + run.stderr
    lint = smk(dvc_repo, "--lint")
    assert "Congratulations" in lint.stdout + lint.stderr
    # the markers Snakemake writes into directory outputs are .dvcignored: DVC still sees the run it recorded
    assert pipeline_status(dvc_repo) == {}


@pytest.mark.slow
def test_sync_mtimes_refuses_when_dvc_status_is_dirty(dvc_repo):
    victim = dvc_repo / "results/predictions/baseline/lead/dev.csv"
    saved = victim.read_bytes()
    victim.write_bytes(saved + b"x,y\n")
    try:
        proc = sh([*KDSUM, "sync-mtimes"], dvc_repo, check=False)
        assert proc.returncode == 2 and "baseline_lead_dev" in proc.stderr
    finally:
        victim.write_bytes(saved)
    assert pipeline_status(dvc_repo) == {}


@pytest.mark.slow
def test_push_pull_round_trip_restores_data_and_models(dvc_repo, tmp_path):
    remote = tmp_path / "remote"
    dvc(dvc_repo, "remote", "add", "-d", "local", str(remote))
    # a user's own raw data: tracked by DVC (cache + remote), not by git
    raw = dvc_repo / "data/raw/dialogues.csv"
    raw.parent.mkdir(parents=True)
    shutil.copy2(dvc_repo / "data/sample/dev.csv", raw)
    dvc(dvc_repo, "add", "data/raw/dialogues.csv")
    raw_md5 = load_yaml(dvc_repo / "data/raw/dialogues.csv.dvc")["outs"][0]["md5"]
    assert "/dialogues.csv" in (dvc_repo / "data/raw/.gitignore").read_text()
    assert (dvc_repo / ".dvc/cache/files/md5" / raw_md5[:2] / raw_md5[2:]).exists()
    git(dvc_repo, "add", "data/raw/dialogues.csv.dvc", "data/raw/.gitignore", ".dvc/config")
    git(dvc_repo, "commit", "-q", "-m", "track my raw data with DVC; local remote")
    # the shipped sample stays in git, not in DVC
    assert git(dvc_repo, "ls-files", "data/sample/train.csv").stdout.strip() == "data/sample/train.csv"
    assert not (dvc_repo / "data/sample/train.csv.dvc").exists()

    before = {
        p: tree_md5(dvc_repo / p)
        for p in (
            "results/train/tiny-llama/default/model",
            "results/train/tiny-bart/default/model",
            "results/base/tiny-bart",
        )
    }
    before_files = {p: md5(dvc_repo / p) for p in (TARGET, "results/data/train.jsonl", "data/raw/dialogues.csv")}
    dvc(dvc_repo, "push")
    lock = load_yaml(dvc_repo / "dvc.lock")
    adapter = next(o for o in lock["stages"]["train_tiny-llama_default"]["outs"] if o["path"].endswith("/model"))["md5"]
    for h in (adapter, raw_md5):
        assert (remote / "files/md5" / h[:2] / h[2:]).exists(), h

    shutil.rmtree(dvc_repo / "results")
    shutil.rmtree(dvc_repo / ".dvc/cache")
    raw.unlink()
    assert pipeline_status(dvc_repo) != {}
    start = time.perf_counter()
    dvc(dvc_repo, "pull")
    FIGURES["dvc pull after deleting results/ and the cache, s"] = round(time.perf_counter() - start, 1)
    assert {p: tree_md5(dvc_repo / p) for p in before} == before
    assert {p: md5(dvc_repo / p) for p in before_files} == before_files
    assert pipeline_status(dvc_repo) == {}

    # DVC restored the files with new mtimes in no particular order, into a workspace synced before (dvc.lock
    # unchanged, so the workflow's guard does not see it: docs/DVC.md says to sync after a pull); the sync step
    # makes Snakemake see the results as current
    sh([*KDSUM, "sync-mtimes"], dvc_repo)
    ok, text, _ = nothing_to_do(dvc_repo)
    assert ok, text[-3000:]
    assert pipeline_status(dvc_repo) == {}


def _changed_by(before: dict, after: dict) -> set[str]:
    """Stages whose recorded deps or params differ between two dvc.lock files."""
    return {name for name, deps in after.items() if deps != before.get(name)}


def _edit_one_summary(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    first = next(csv.DictReader(text.splitlines(keepends=True)))
    old = first["summary"]
    assert text.count(old) == 1
    path.write_text(text.replace(old, old + " 정말로요."), encoding="utf-8")


@pytest.mark.slow
def test_raw_data_edit_reruns_exactly_what_depends_on_it(dvc_repo):
    assert pipeline_status(dvc_repo) == {}
    before = lock_hashes(load_yaml(dvc_repo / "dvc.lock"))
    _edit_one_summary(dvc_repo / "data/sample/train.csv")
    status = pipeline_status(dvc_repo)
    assert set(status) == {"ingest"}, status  # only the stage reading the file sees it; the rest follows
    start = time.perf_counter()
    proc = dvc(dvc_repo, "repro")
    FIGURES["dvc repro after editing one training summary, s"] = round(time.perf_counter() - start, 1)
    ran = ran_stages(proc.stdout)
    FIGURES["stages rerun by the raw-data edit"] = ran
    stages = load_yaml(dvc_repo / "dvc.yaml")["stages"]
    after = lock_hashes(load_yaml(dvc_repo / "dvc.lock"))
    # exactly the stages at least one of whose inputs changed content reran ...
    assert set(ran) == _changed_by(before, after)
    # ... which is everything that reads the training split: data, prompts, bases, models, every prediction
    must = {"ingest", "summary"} | {n for n in stages if n.startswith(("prompts_", "base_", "train_", "predict_"))}
    assert must <= set(ran), sorted(must - set(ran))
    # the baselines read dev/test only, which are byte-identical: not rerun
    assert not [n for n in ran if n.startswith("baseline_")]
    assert after["ingest"]["data/sample/train.csv"] != before["ingest"]["data/sample/train.csv"]
    assert pipeline_status(dvc_repo) == {}
    sh([*KDSUM, "sync-mtimes"], dvc_repo)
    assert nothing_to_do(dvc_repo)[0]


@pytest.mark.slow
def test_a_model_added_to_run_stops_dvc_repro_first(dvc_repo):
    """A change of the DAG's shape in config.yaml: `dvc repro` stops at its first stage, naming the command."""
    config = load_yaml(dvc_repo / "config.yaml")
    saved = (dvc_repo / "config.yaml").read_text(encoding="utf-8")
    config["run"]["variants"] = ["default", "constant-lr"]
    (dvc_repo / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    try:
        proc = dvc(dvc_repo, "repro", check=False)
        assert proc.returncode != 0
        assert ran_stages(proc.stdout) == ["check_dag"], proc.stdout[-2000:]
        assert "run `kdsum dvc-yaml --configfile config.yaml`, then `dvc repro`" in proc.stdout + proc.stderr
    finally:
        (dvc_repo / "config.yaml").write_text(saved, encoding="utf-8")
    assert pipeline_status(dvc_repo) == {}


@pytest.mark.slow
def test_export_runs_only_when_named_and_is_cached(dvc_fast_pipeline, tmp_path):
    """A plain `dvc repro` ran no export; `dvc repro export/dvc.yaml:<stage>` on a copy runs that one export and
    nothing upstream, caches it (and `dvc push` carries it), and the directory loads as a plain HF model."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    first = (dvc_fast_pipeline.parent / f"{dvc_fast_pipeline.name}.repro.log").read_text(encoding="utf-8")
    assert not [s for s in ran_stages(first) if "export" in s]
    work = copy_built(dvc_fast_pipeline, tmp_path / "kdsum")
    sh([*KDSUM, "dvc-yaml", "--exports"], work)  # asked for: the exports' file, beside an unchanged dvc.yaml
    assert (work / "dvc.yaml").read_bytes() == (dvc_fast_pipeline / "dvc.yaml").read_bytes()
    exports = load_yaml(work / "export/dvc.yaml")["stages"]
    assert len(exports) == 2
    never_run = {f"export/dvc.yaml:{name}" for name in exports}
    assert set(json.loads(dvc(work, "status", "--json").stdout)) == never_run  # repo-wide: only the exports
    stage, out = "export/dvc.yaml:export_tiny-bart_default", "results/export/tiny-bart/default"
    start = time.perf_counter()
    proc = dvc(work, "repro", stage)
    FIGURES["dvc repro of one export (tiny-bart), s"] = round(time.perf_counter() - start, 1)
    assert ran_stages(proc.stdout) == [stage], proc.stdout[-3000:]
    (entry,) = load_yaml(work / "export/dvc.lock")["stages"]["export_tiny-bart_default"]["outs"]
    assert entry["path"] == out and entry["md5"].endswith(".dir")
    assert (work / ".dvc/cache/files/md5" / entry["md5"][:2] / entry["md5"][2:]).exists()
    # the pipeline and the export are clean: only the export that did not run is left
    assert set(json.loads(dvc(work, "status", "--json").stdout)) == never_run - {stage}
    remote = tmp_path / "remote"
    dvc(work, "remote", "add", "-d", "local", str(remote))
    dvc(work, "push")
    assert (remote / "files/md5" / entry["md5"][:2] / entry["md5"][2:]).exists()
    model = AutoModelForSeq2SeqLM.from_pretrained(work / out)
    tokenizer = AutoTokenizer.from_pretrained(work / out)
    assert model.config.model_type == "bart" and "#Person1#" in tokenizer.get_vocab()
    print(f"\ndvc repro of one export: {FIGURES['dvc repro of one export (tiny-bart), s']} s")
