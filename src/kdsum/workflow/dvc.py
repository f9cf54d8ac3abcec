"""dvc.yaml, derived from the Snakemake DAG: the rules are the one description of every stage.

Each job of ``snakemake --forceall results/summary.csv`` becomes a DVC stage with the job's shell command (less the
`` > log 2>&1`` that Snakemake adds), its inputs as deps (its one code file included: the rules list it) and its outputs
as outs; outputs named ``metrics`` are DVC metrics. Two stages are DVC's own:

* ``check_dag``: reruns when config.yaml, the rules or the config code change and stops ``dvc repro`` with one line
  when dvc.yaml no longer matches the DAG (say, a model added to run.models).
* ``specs``: ``kdsum spec`` writes the spec files and the code files (kdsum.workflow.deps), as the Snakemake
  workflow does when it loads, each only when its content changed. Its params are the config keys the specs read, so ``dvc exp run -S
  models.M.train.learning_rate=...`` reruns it, and then exactly the stages whose spec file changed (model M's).

The ``export`` jobs of every fine-tuned system (``results/export/M/V``, not in the default target) go to a second
file, ``export/dvc.yaml`` (``wdir: ..``: the same commands and paths): a plain ``dvc repro`` reads only the root
dvc.yaml, so an export runs only when that file or one of its stages is named. One Snakemake DAG gives both files.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kdsum.config.catalog import spec_names
from kdsum.config.resolve import grid, load_config
from kdsum.errors import KdsumError
from kdsum.workflow import specs
from kdsum.workflow.deps import PACKAGE, ROOT, SRC, code_path, stage_code, stages
from kdsum.workflow.specs import spec_params, spec_path

TARGET = "results/summary.csv"
DAG_FILE = "results/specs/dag.txt"
CONFIG_FILE = "config.yaml"
EXPORT_FILE = "export/dvc.yaml"
EXPORT_RULE = "export"
HEADER = (
    "# GENERATED from the Snakemake rules by `kdsum dvc-yaml` (docs/DVC.md): do not edit by hand.\n"
    "# `dvc repro` stops at its first stage, naming that command, when config.yaml changes the DAG.\n"
)
EXPORT_HEADER = (
    "# GENERATED from the Snakemake rules by `kdsum dvc-yaml` (docs/DVC.md): do not edit by hand.\n"
    "# A plain `dvc repro` does not run these: `dvc repro export/dvc.yaml` runs every export, or name one stage.\n"
)
_LOG_REDIRECT = re.compile(r"\s*>\s*\S+\s+2>&1\s*$")


class DvcYamlError(KdsumError):
    """dvc.yaml does not match the Snakemake DAG."""


@dataclass
class SnakemakeJob:
    rule: str
    wildcards: dict[str, str]
    inputs: list[str]
    outputs: dict[str, list[str]]  # output name (or "") -> paths
    params: dict[str, object] = field(default_factory=dict)
    shell: str = ""
    in_target: bool = True  # upstream of the main target (results/summary.csv), not only of an extra one

    @property
    def stage(self) -> str:
        values = [str(v).replace("/", "_") for v in self.wildcards.values()]
        return "_".join([self.rule, *values])


def _named(namedlist) -> dict[str, list[str]]:
    names = {}
    for name, (start, end) in namedlist._names.items():
        names[name] = [str(x) for x in list(namedlist)[start : end if end is not None else start + 1]]
    rest = [str(x) for x in namedlist if not any(str(x) in v for v in names.values())]
    if rest:
        names[""] = rest
    return names


def export_targets(config_file: str = CONFIG_FILE, root: Path = ROOT) -> list[str]:
    """The export directory of every (model, variant) that ``train`` runs: zero-shot has none (``kdsum export``
    refuses it)."""
    return [f"results/export/{m}/{v}" for m, v in grid(load_config(root / config_file))]


def snakemake_jobs(
    config_file: str = CONFIG_FILE, root: Path = ROOT, target: str = TARGET, extra: tuple[str, ...] = ()
) -> list[SnakemakeJob]:
    """The jobs of ``target`` and the ``extra`` targets with every job forced, in dependency order, from one
    Snakemake DAG; ``in_target`` marks the jobs ``target`` needs."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

    specs.GUARD["on"] = False  # reading the DAG plans nothing on the results
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[root / config_file]),
            snakefile=root / "Snakefile",
            workdir=root,
        )
        for name in ("snakemake", "snakemake.logging"):  # its INFO lines would drown the one-line verdict
            logging.getLogger(name).setLevel(logging.WARNING)
        workflow_api.dag(DAGSettings(targets={target, *extra}, forceall=True))
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        return _jobs(workflow.dag, target)


def _jobs(dag, target: str) -> list[SnakemakeJob]:
    main = [job for job in dag.targetjobs if target in map(str, job.output) or job.rule.name == "all"]
    needed = set(dag.bfs(dag.dependencies, *main))
    jobs = []
    for level in dag.toposorted():
        for job in sorted(level, key=lambda j: (j.rule.name, str(j.wildcards_dict))):
            if job.rule.name != "all" and job.rule.shellcmd:
                jobs.append(_job(job, in_target=job in needed))
    return jobs


def _job(job, in_target: bool) -> SnakemakeJob:
    return SnakemakeJob(
        rule=job.rule.name,
        wildcards={k: str(v) for k, v in job.wildcards_dict.items()},
        inputs=[str(f) for f in job.input],
        outputs=_named(job.output),
        params={k: job.params[k] for k in job.params._names},
        shell=job.shellcmd,
        in_target=in_target,
    )


def dvc_stage(job: SnakemakeJob) -> dict:
    stage: dict = {"cmd": _LOG_REDIRECT.sub("", job.shell), "deps": list(dict.fromkeys(job.inputs))}
    outs = [p for name, paths in job.outputs.items() if name != "metrics" for p in paths]
    metrics = job.outputs.get("metrics", [])
    if outs:
        stage["outs"] = outs
    if metrics:
        stage["metrics"] = metrics  # cached: results/ is not in git, so the cache (and a remote) keeps them
    return stage


def check_stage(config_file: str = CONFIG_FILE, root: Path = ROOT) -> dict:
    rules = sorted(p.relative_to(root).as_posix() for p in (root / "rules").glob("*.smk"))
    return {
        "cmd": shlex.join(["kdsum", "dvc-yaml", "--check", "--configfile", config_file, "--dag-out", DAG_FILE]),
        "deps": [
            config_file,
            "Snakefile",
            *rules,
            "schemas/config.schema.yaml",
            *dict.fromkeys([*stage_code("dvc-yaml"), *stage_code("spec")]),
        ],
        # persist: a failed check must leave the last good listing in place (DVC deletes outs before a run)
        "outs": [{DAG_FILE: {"persist": True}}],
    }


def specs_stage(config_file: str = CONFIG_FILE, root: Path = ROOT) -> dict:
    """Every spec file and every stage's code file, written by the one spec command; it depends on the whole
    package, whose changes reach a stage only through that stage's code file. persist: DVC must not delete them
    before the run, or every file would be rewritten and its mtime moved (Snakemake's trigger)."""
    config = load_config(root / config_file)
    written = [spec_path(name) for name in spec_names(config)] + [code_path(s) for s in stages(root)]
    return {
        "cmd": shlex.join(["kdsum", "spec", "--configfile", config_file]),
        "deps": [DAG_FILE, "schemas/config.schema.yaml", f"{SRC}/{PACKAGE}"],
        "params": [{config_file: spec_params(config)}],
        "outs": [{path: {"persist": True}} for path in written],
    }


def plots(jobs: list[SnakemakeJob]) -> list[dict]:
    """Every training-loss curve in one chart, and the summary table as bars."""
    histories = {p: "loss" for j in jobs if j.rule == "train" for p in j.outputs["history"]}
    out = []
    if histories:
        out.append(
            {
                "training_loss": {
                    "template": "linear",
                    "x": "step",
                    "y": histories,
                    "title": "Training loss",
                    "x_label": "optimizer step",
                    "y_label": "loss",
                }
            }
        )
    out.append(
        {
            TARGET: {
                "template": "bar_horizontal",
                "x": "final",
                "y": "system",
                "title": "Final score per system (dev; mean of ROUGE-1/2/L F1)",
            }
        }
    )
    return out


def render(jobs: list[SnakemakeJob], config_file: str = CONFIG_FILE, root: Path = ROOT) -> str:
    stages = {"check_dag": check_stage(config_file, root), "specs": specs_stage(config_file, root)}
    stages.update({job.stage: dvc_stage(job) for job in jobs})
    doc = {"stages": stages, "plots": plots(jobs)}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120)


def render_exports(jobs: list[SnakemakeJob]) -> str:
    """export/dvc.yaml: one stage per export job, run from the repository root like every stage of dvc.yaml."""
    stages = {job.stage: {"wdir": "..", **dvc_stage(job)} for job in jobs if job.rule == EXPORT_RULE}
    return EXPORT_HEADER + yaml.safe_dump({"stages": stages}, sort_keys=False, allow_unicode=True, width=120)


def split_jobs(jobs: list[SnakemakeJob]) -> tuple[list[SnakemakeJob], list[SnakemakeJob]]:
    """(dvc.yaml's jobs, export/dvc.yaml's jobs); an export needing a job the main target does not is refused:
    a plain `dvc repro` would have to run it."""
    extra = [job.stage for job in jobs if not job.in_target and job.rule != EXPORT_RULE]
    if extra:
        raise DvcYamlError(f"{EXPORT_FILE}: the exports need stage(s) {', '.join(extra)} that {TARGET} does not")
    return [j for j in jobs if j.in_target], [j for j in jobs if j.rule == EXPORT_RULE]


def dag_listing(jobs: list[SnakemakeJob]) -> str:
    return "".join(f"{job.stage}\n" for job in jobs)


def stale_message(current: str, expected: str, path: str, config_file: str) -> str | None:
    if current == expected:
        return None
    have = set(re.findall(r"^  (\S+):$", current, re.M))
    want = set(re.findall(r"^  (\S+):$", expected, re.M))
    change = f"{len(want - have)} stage(s) to add, {len(have - want)} to remove" if have != want else "stages changed"
    return (
        f"{path} does not match the Snakemake DAG of {config_file} ({change}): "
        f"run `kdsum dvc-yaml --configfile {config_file}`, then `dvc repro`"
    )
