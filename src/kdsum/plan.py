"""The pipeline's plan: every path, every job and its command, computed from the config.

Snakemake (rules/*.smk) takes its path patterns from here, and ``scripts/make_dvc.py`` writes dvc.yaml from the
same jobs, so the two front doors run the same CLIs on the same paths. tests/test_dvc.py checks that the commands
and outputs of ``snakemake --dry-run`` and of dvc.yaml agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kdsum.config import BASELINE_MODEL, ZERO_SHOT, grid, resolve

RESULTS = "results"
PATHS = {
    "data": "results/data/{split}.jsonl",
    "data_stats": "results/data/stats.json",
    "prompts": "results/prompts/{prompt_set}",
    "base": "results/base/{model}",
    "base_metrics": "results/base/{model}.json",
    "model_dir": "results/train/{model}/{variant}/model",
    "train_metrics": "results/train/{model}/{variant}/train_metrics.json",
    "log_history": "results/train/{model}/{variant}/log_history.csv",
    "checkpoints": "results/checkpoints/{model}/{variant}",
    "predictions": "results/predictions/{model}/{variant}/{split}.csv",
    "submission": "results/predictions/{model}/{variant}/submission.csv",
    "scores": "results/scores/{model}/{variant}/{split}.json",
    "score_items": "results/scores/{model}/{variant}/{split}_items.csv",
    "summary_csv": "results/summary.csv",
    "summary_md": "results/summary.md",
    "scores_plot": "results/plots/scores.png",
    "loss_plot": "results/plots/loss.png",
    "log": "results/logs/{rule}/{name}.log",
}
SCRIPTS = {
    "ingest": "scripts/ingest.py",
    "prompts": "scripts/format_prompts.py",
    "base": "scripts/build_base_model.py",
    "train": "scripts/train.py",
    "predict": "scripts/predict.py",
    "baseline": "scripts/baseline.py",
    "submission": "scripts/make_submission.py",
    "evaluate": "scripts/evaluate.py",
    "summary": "scripts/summarize.py",
}
PY = "python"


def path(key: str, **kw) -> str:
    return PATHS[key].format(**kw)


def splits(config: dict) -> list[str]:
    return ["train"] + [s for s in ("dev", "test") if config["data"].get(s)]


def predict_splits(config: dict) -> list[str]:
    return [s for s in config["run"]["splits"] if config["data"].get(s)]


def scored_splits(config: dict) -> list[str]:
    # test sets of the competition carry no references: they get predictions and a submission file only
    return [s for s in predict_splits(config) if s == "dev"]


def prompt_set(spec: dict) -> str:
    return "seq2seq" if spec["family"] == "seq2seq" else f"chat-{spec['prompt_format']}"


def prompt_args(config: dict, pset: str) -> str:
    if pset == "seq2seq":
        return "--family seq2seq"
    fmt = pset.removeprefix("chat-")
    if fmt not in config["prompt"]["formats"]:
        raise ValueError(f"unknown prompt set '{pset}'")
    return f"--family chat --format {fmt}"


def base_source(spec: dict) -> str:
    """The base weights a job loads: the built directory, or the configured hub id / local path."""
    return path("base", model=spec["name"]) if spec["build"] else spec["source"]


def systems(config: dict) -> list[tuple[str, str]]:
    """Every row of the summary: trained (model, variant), zero-shot (model, 'zeroshot'), baselines."""
    out = list(grid(config))
    if config["run"]["zero_shot"]:
        out += [(m, ZERO_SHOT) for m in config["run"]["models"]]
    out += [(BASELINE_MODEL, b) for b in config["baselines"]]
    return out


def settings_fingerprint(config: dict, model: str, variant: str) -> str:
    """What a training or prediction job reads from the config, as one string (a Snakemake rerun trigger)."""
    return json.dumps(resolve(config, model, variant), sort_keys=True, ensure_ascii=False)


# ------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    """One job of the pipeline: what DVC calls a stage and Snakemake a job."""

    stage: str
    cmd: str
    deps: list[str]
    outs: list[str]
    params: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    log: str = ""


def _cmd(script: str, args: str, log: str) -> str:
    """The command of a job. Snakemake appends `` > {log} 2>&1`` (one log file per rule); DVC runs it bare so
    `dvc repro` shows progress live. Otherwise the two are the same string (tests/test_dvc.py checks it)."""
    return f"{PY} {SCRIPTS[script]} {args}"


def log_path(rule: str, name: str) -> str:
    return path("log", rule=rule, name=name)


def ingest_cmd(config: dict, log: str) -> str:
    data = config["data"]
    args = " ".join(f"--{s} {data[s]}" for s in ("train", "dev", "test") if data.get(s))
    return _cmd("ingest", f"{args} --out-dir results/data", log)


def prompts_cmd(config: dict, config_path: str, pset: str, log: str) -> str:
    return _cmd("prompts", f"--config {config_path} --data-dir results/data {prompt_args(config, pset)} "
                           f"--out-dir {path('prompts', prompt_set=pset)}", log)


def base_cmd(config_path: str, spec: dict, log: str) -> str:
    m = spec["name"]
    return _cmd("base", f"--config {config_path} --model {m} --train {path('data', split='train')} "
                        f"--special-tokens {path('prompts', prompt_set=prompt_set(spec))}/special_tokens.json "
                        f"--out-dir {path('base', model=m)} --metrics {path('base_metrics', model=m)}", log)


def train_cmd(config_path: str, spec: dict, log: str) -> str:
    m, v = spec["name"], spec["variant"]
    return _cmd("train", f"--config {config_path} --model {m} --variant {v} "
                         f"--prompts-dir {path('prompts', prompt_set=prompt_set(spec))} --base {base_source(spec)} "
                         f"--out-dir results/train/{m}/{v} --checkpoint-dir {path('checkpoints', model=m, variant=v)}",
                log)


def predict_cmd(config_path: str, spec: dict, split: str, log: str) -> str:
    m, v = spec["name"], spec["variant"]
    weights = (f"--base {base_source(spec)}" if v == ZERO_SHOT
               else f"--model-dir {path('model_dir', model=m, variant=v)}")
    return _cmd("predict", f"--config {config_path} --model {m} --variant {v} --split {split} "
                           f"--prompts-dir {path('prompts', prompt_set=prompt_set(spec))} {weights} "
                           f"--out {path('predictions', model=m, variant=v, split=split)}", log)


def baseline_cmd(name: str, split: str, log: str) -> str:
    return _cmd("baseline", f"--name {name} --data {path('data', split=split)} "
                            f"--out {path('predictions', model=BASELINE_MODEL, variant=name, split=split)}", log)


def submission_cmd(model: str, variant: str, log: str) -> str:
    return _cmd("submission", f"--predictions {path('predictions', model=model, variant=variant, split='test')} "
                              f"--data {path('data', split='test')} "
                              f"--out {path('submission', model=model, variant=variant)}", log)


def evaluate_cmd(config: dict, model: str, variant: str, split: str, log: str) -> str:
    ev = config["evaluation"]
    return _cmd("evaluate", f"--predictions {path('predictions', model=model, variant=variant, split=split)} "
                            f"--references {path('data', split=split)} "
                            f"--out-json {path('scores', model=model, variant=variant, split=split)} "
                            f"--out-items {path('score_items', model=model, variant=variant, split=split)} "
                            f"--aggregate {ev['aggregate']} --bootstrap {ev['bootstrap']} --seed {ev['seed']}", log)


def summary_cmd(config_path: str, log: str) -> str:
    return _cmd("summary", f"--config {config_path} --results {RESULTS} --out-csv {PATHS['summary_csv']} "
                           f"--out-md {PATHS['summary_md']} --scores-plot {PATHS['scores_plot']} "
                           f"--loss-plot {PATHS['loss_plot']}", log)


def summary_inputs(config: dict) -> list[str]:
    inputs = []
    for m, v in systems(config):
        for s in scored_splits(config):
            inputs.append(path("scores", model=m, variant=v, split=s))
        if "test" in predict_splits(config):
            inputs.append(path("submission", model=m, variant=v) if m != BASELINE_MODEL
                          else path("predictions", model=m, variant=v, split="test"))
    for m, v in grid(config):
        inputs += [path("train_metrics", model=m, variant=v), path("log_history", model=m, variant=v)]
    for m in config["run"]["models"]:
        if config["models"][m].get("build"):
            inputs.append(path("base_metrics", model=m))
    return inputs


def model_params(config: dict, model: str, variant: str) -> list[str]:
    """The config keys a model job reads (DVC params), so that changing one model's entry reruns that model's
    jobs and nothing else. Zero-shot jobs read only what generation needs, so a training hyperparameter does
    not rerun them."""
    entry = config["models"][model]
    spec = resolve(config, model, variant)
    keys = [f"prompt.formats.{spec['prompt_format']}"] if spec["family"] == "causal" else []
    if variant == ZERO_SHOT:
        keys += [f"models.{model}.{k}" for k in ("family", "method", "source", "build", "generation",
                                                  "prompt_format", "quantization") if k in entry]
        keys += ["defaults.generation", "defaults.prompt_format", "defaults.quantization", "defaults.train.max_length"]
    else:
        keys += [f"models.{model}", "defaults", f"variants.{variant}"]
    return keys


def jobs(config: dict, config_path: str = "config.yaml") -> list[Job]:
    """Every job of the default target, in dependency order."""
    out: list[Job] = []
    data_outs = [path("data", split=s) for s in splits(config)] + [PATHS["data_stats"]]
    log = log_path("ingest", "ingest")
    out.append(Job("ingest", ingest_cmd(config, log), [SCRIPTS["ingest"], "src/kdsum/data.py"]
                   + [config["data"][s] for s in ("train", "dev", "test") if config["data"].get(s)],
                   data_outs[:-1], params=["data"], metrics=[PATHS["data_stats"]], log=log))

    specs = {(m, v): resolve(config, m, v) for m, v in grid(config)}
    specs.update({(m, ZERO_SHOT): resolve(config, m, ZERO_SHOT) for m in config["run"]["models"]})
    psets = sorted({prompt_set(s) for s in specs.values()})
    for pset in psets:
        log = log_path("prompts", pset)
        out.append(Job(f"prompts_{pset}", prompts_cmd(config, config_path, pset, log),
                       [SCRIPTS["prompts"], "src/kdsum/prompts.py"] + data_outs[:-1],
                       [path("prompts", prompt_set=pset)],
                       params=[] if pset == "seq2seq" else [f"prompt.formats.{pset.removeprefix('chat-')}"], log=log))

    for m in config["run"]["models"]:
        spec = specs[(m, ZERO_SHOT)]
        if spec["build"]:
            log = log_path("build_base", m)
            out.append(Job(f"base_{m}", base_cmd(config_path, spec, log),
                           [SCRIPTS["base"], "src/kdsum/modeling.py", path("data", split="train"),
                            path("prompts", prompt_set=prompt_set(spec))],
                           [path("base", model=m)], params=[f"models.{m}.build", f"models.{m}.family"],
                           metrics=[path("base_metrics", model=m)], log=log))

    def base_deps(spec):
        return [path("base", model=spec["name"])] if spec["build"] else []

    for (m, v), spec in specs.items():
        if v == ZERO_SHOT:
            continue
        log = log_path("train", f"{m}/{v}")
        out.append(Job(f"train_{m}_{v}", train_cmd(config_path, spec, log),
                       [SCRIPTS["train"], "src/kdsum/training.py", "src/kdsum/modeling.py",
                        path("prompts", prompt_set=prompt_set(spec))] + base_deps(spec),
                       [path("model_dir", model=m, variant=v), path("log_history", model=m, variant=v)],
                       params=model_params(config, m, v),
                       metrics=[path("train_metrics", model=m, variant=v)],
                       plots=[path("log_history", model=m, variant=v)], log=log))

    for (m, v), spec in specs.items():
        weights = base_deps(spec) if v == ZERO_SHOT else [path("model_dir", model=m, variant=v)]
        for s in predict_splits(config):
            log = log_path("predict", f"{m}/{v}/{s}")
            out.append(Job(f"predict_{m}_{v}_{s}", predict_cmd(config_path, spec, s, log),
                           [SCRIPTS["predict"], "src/kdsum/generation.py", "src/kdsum/modeling.py", "src/kdsum/training.py",
                            path("prompts", prompt_set=prompt_set(spec))] + weights,
                           [path("predictions", model=m, variant=v, split=s)],
                           params=model_params(config, m, v), log=log))
    for b in config["baselines"]:
        for s in predict_splits(config):
            log = log_path("baseline", f"{b}/{s}")
            out.append(Job(f"baseline_{b}_{s}", baseline_cmd(b, s, log),
                           [SCRIPTS["baseline"], "src/kdsum/baselines.py", path("data", split=s)],
                           [path("predictions", model=BASELINE_MODEL, variant=b, split=s)], log=log))

    for m, v in systems(config):
        if m != BASELINE_MODEL and "test" in predict_splits(config):
            log = log_path("submission", f"{m}/{v}")
            out.append(Job(f"submission_{m}_{v}", submission_cmd(m, v, log),
                           [SCRIPTS["submission"], path("predictions", model=m, variant=v, split="test"),
                            path("data", split="test")],
                           [path("submission", model=m, variant=v)], log=log))
        for s in scored_splits(config):
            log = log_path("evaluate", f"{m}/{v}/{s}")
            out.append(Job(f"evaluate_{m}_{v}_{s}", evaluate_cmd(config, m, v, s, log),
                           [SCRIPTS["evaluate"], "src/kdsum/metrics.py",
                            path("predictions", model=m, variant=v, split=s), path("data", split=s)],
                           [path("score_items", model=m, variant=v, split=s)], params=["evaluation"],
                           metrics=[path("scores", model=m, variant=v, split=s)], log=log))

    log = log_path("summary", "summary")
    out.append(Job("summary", summary_cmd(config_path, log),
                   [SCRIPTS["summary"], "src/kdsum/summary.py"] + summary_inputs(config),
                   [PATHS["summary_md"], PATHS["scores_plot"], PATHS["loss_plot"]],
                   params=["run", "baselines"], metrics=[], plots=[PATHS["summary_csv"]], log=log))
    return out
