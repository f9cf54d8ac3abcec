"""The dev set's tuning/report split (kdsum.selection.tuning), selection on tuning rows (kdsum.selection.select), candidate
checkpoints (kdsum.training.candidates) and the checkpoint choice (kdsum.selection.choice), and the report-row score
in the summary.

Run: PYTHONPATH=src python3 -m pytest tests/test_selection.py -q
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from kdsum.cli import main as kdsum_main
from kdsum.config.catalog import spec_for, spec_names
from kdsum.config.files import ConfigError
from kdsum.config.resolve import load_config, resolve_decoding
from kdsum.config.spec import from_dict, to_dict, to_json
from kdsum.reporting.summary import SummaryError, SummaryInputs, summary_table
from kdsum.selection.choice import checkpoint_choice, chosen_model_dir
from kdsum.selection.select import SelectionError, best_index, checkpoint_table, decoding_table, with_selected_decoding
from kdsum.selection.tuning import REPORT, TUNING, TuningSplitError, part_of, split_fnames, tuning_share
from kdsum.training.candidates import CandidateSaver, candidate_models, collect_candidates

ROOT = Path(__file__).resolve().parents[1]
FNAMES = [f"dev_{i}" for i in range(200)]


# --------------------------------------------------------------------------------------------- the split
def test_split_is_deterministic_disjoint_and_stable():
    parts = split_fnames(FNAMES, 0.5)
    assert set(parts[TUNING]).isdisjoint(parts[REPORT])
    assert sorted(parts[TUNING] + parts[REPORT]) == sorted(FNAMES)
    assert 70 < len(parts[TUNING]) < 130  # about half of 200
    # a row's part depends on its fname alone: other rows added or removed move nothing
    smaller = split_fnames(FNAMES[::3], 0.5)
    assert set(smaller[TUNING]) == set(parts[TUNING]) & set(FNAMES[::3])
    # a larger fraction only moves rows from report to tuning
    assert set(parts[TUNING]) <= set(split_fnames(FNAMES, 0.8)[TUNING])
    # fixed numbers (not Python's salted hash): the same in every process and on every machine
    assert tuning_share("dev_0") == int.from_bytes(__import__("hashlib").sha256(b"dev_0").digest()[:8]) / 2**64
    assert part_of("dev_0", 0.5) in (TUNING, REPORT)


def test_a_part_left_empty_is_refused_naming_the_key():
    with pytest.raises(TuningSplitError, match="evaluation.tuning_fraction"):
        split_fnames(["dev_0"], 0.5)


# --------------------------------------------------------------------------------------------- scoring parts
REFS = {f"d{i}": [f"민수가 {i}번 학교에 갔다.", f"민수는 {i}번째로 학교에 간다."] for i in range(12)}


def _write(tmp_path: Path, preds: dict[str, str]) -> tuple[Path, Path, Path]:
    p, r, s = tmp_path / "P.csv", tmp_path / "R.jsonl", tmp_path / "evaluation.json"
    pd.DataFrame({"fname": list(preds), "summary": list(preds.values())}).to_csv(p, index=False)
    r.write_text("".join(json.dumps({"fname": f, "summaries": v}, ensure_ascii=False) + "\n" for f, v in REFS.items()))
    s.write_text(to_json(spec_for(load_config(ROOT / "config.yaml"), "evaluation")))
    return p, r, s


def _evaluate(tmp_path, p, r, s, part, name):
    out = tmp_path / f"{name}.json"
    argv = ["evaluate", "--spec", str(s), "--predictions", str(p), "--references", str(r)]
    kdsum_main([*argv, "--out-json", str(out), "--out-items", str(tmp_path / f"{name}.csv"), "--part", part])
    return json.loads(out.read_text()), pd.read_csv(tmp_path / f"{name}.csv", dtype={"fname": str})


def test_report_score_comes_from_report_rows_only(tmp_path):
    """Perfect summaries on the tuning rows, nonsense on the report rows: a report score that used the tuning
    (selection) rows would be above 0."""
    parts = split_fnames(REFS, 0.5)
    preds = {f: (REFS[f][0] if f in parts[TUNING] else "qqq zzz") for f in REFS}
    p, r, s = _write(tmp_path, preds)
    report, report_items = _evaluate(tmp_path, p, r, s, "report", "report")
    tuning, tuning_items = _evaluate(tmp_path, p, r, s, "tuning", "tuning")
    assert report["part"] == "report" and report["n"] == len(parts[REPORT])
    assert set(report_items["fname"]) == set(parts[REPORT])
    assert set(tuning_items["fname"]) == set(parts[TUNING])
    assert report["rouge_sum"] < 5 < 150 < tuning["rouge_sum"]


# --------------------------------------------------------------------------------------------- decoding
def _config(tmp_path, extra: str = "") -> dict:
    path = tmp_path / "overlay.yaml"
    path.write_text(extra or "run: {models: [tiny-bart]}\ndecoding: {grid: {beam4: {num_beams: 4}}}\n")
    return load_config([ROOT / "config.yaml", path])


def test_decoding_specs_apply_the_grid_overrides(tmp_path):
    cfg = _config(tmp_path)
    names = spec_names(cfg)
    assert {"decode/tiny-bart/default/greedy", "decode/tiny-bart/default/sample"} <= set(names)
    sample = spec_for(cfg, "decode/tiny-bart/default/sample")
    own = spec_for(cfg, "model/tiny-bart/default")
    assert sample.generation.do_sample and sample.generation.temperature == 0.7 and sample.generation.top_p == 0.9
    assert sample.generation.max_new_tokens == own.generation.max_new_tokens == 64  # the model's own, kept
    assert dataclasses.replace(sample, generation=own.generation) == own  # nothing but generation differs
    assert from_dict(to_dict(sample)) == sample
    with pytest.raises(ConfigError, match="unknown decoding setting"):
        resolve_decoding(cfg, "tiny-bart", "default", "nope")


def test_adding_a_setting_leaves_the_other_settings_specs_unchanged(tmp_path):
    before = _config(tmp_path)
    after = _config(
        tmp_path, "run: {models: [tiny-bart]}\ndecoding: {grid: {beam4: {num_beams: 4}, beam2: {num_beams: 2}}}\n"
    )
    assert spec_for(after, "decode/tiny-bart/default/beam2").generation.num_beams == 2
    for setting in ("greedy", "beam4", "sample"):
        name = f"decode/tiny-bart/default/{setting}"
        assert to_json(spec_for(before, name)) == to_json(spec_for(after, name))
    assert to_json(spec_for(before, "model/tiny-bart/default")) == to_json(spec_for(after, "model/tiny-bart/default"))


def _scores(tmp_path: Path, name: str, rouge_sum: float, part: str = TUNING) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"rouge1": 1, "rouge2": 1, "rougeL": 1, "rouge_sum": rouge_sum, "n": 10, "part": part}))
    return path


def test_the_best_setting_on_tuning_rows_is_chosen_and_predict_uses_it(tmp_path):
    cfg = _config(tmp_path)
    names = ["greedy", "beam4", "sample"]
    jobs = [spec_for(cfg, f"decode/tiny-bart/default/{n}") for n in names]
    paths = [_scores(tmp_path, n, v) for n, v in zip(names, [30.0, 45.0, 45.0], strict=True)]
    df = decoding_table(names, paths, jobs)
    assert df.loc[df["chosen"], "setting"].tolist() == ["beam4"]  # a tie goes to the first in config order
    assert df.loc[1, "final"] == 15.0 and df.loc[1, "num_beams"] == 4
    choice = tmp_path / "decoding.json"
    kdsum_main(
        ["select-decoding", "--names", *names, "--scores", *map(str, paths)]
        + ["--specs", *[str(_spec(tmp_path, j, n)) for j, n in zip(jobs, names, strict=True)]]
        + ["--out-json", str(choice), "--out-csv", str(tmp_path / "d.csv"), "--out-md", str(tmp_path / "d.md")]
        + ["--plot", str(tmp_path / "d.png")]
    )
    assert json.loads(choice.read_text())["setting"] == "beam4" and (tmp_path / "d.png").stat().st_size > 0
    own = spec_for(cfg, "model/tiny-bart/default")
    assert with_selected_decoding(own, choice).generation == jobs[1].generation
    other = spec_for(load_config(ROOT / "config.yaml"), "model/tiny-llama/default")
    with pytest.raises(SelectionError, match="not of 'tiny-llama/default'"):
        with_selected_decoding(other, choice)


def _spec(tmp_path, job, name) -> Path:
    path = tmp_path / f"{name}.spec.json"
    path.write_text(to_json(job))
    return path


def test_selection_refuses_scores_of_report_rows(tmp_path):
    cfg = _config(tmp_path)
    job = spec_for(cfg, "decode/tiny-bart/default/greedy")
    with pytest.raises(SelectionError, match="not a score of the dev set's tuning rows"):
        decoding_table(["greedy"], [_scores(tmp_path, "g", 30.0, part=REPORT)], [job])


def test_best_index_first_of_ties_and_never_nan():
    assert best_index([1.0, float("nan"), 3.0, 3.0]) == 2
    with pytest.raises(SelectionError):
        best_index([float("nan")])


# --------------------------------------------------------------------------------------------- checkpoints
class _Saving:
    """Stands in for a model/tokenizer: save_pretrained writes a file (what CandidateSaver calls)."""

    config = type("C", (), {"use_cache": False})()

    def save_pretrained(self, path, **kwargs):
        Path(path, f"{type(self).__name__}.txt").write_text("x")

    def named_parameters(self):  # no weights to check (kdsum.models.finite)
        return []


def _state(step):
    return type("S", (), {"global_step": step})()


def _control():
    return type("Ctl", (), {"should_save": False})()


def test_candidate_saver_saves_listed_steps_and_collect_indexes_them(tmp_path):
    saver = CandidateSaver([2, 4, 9], "seq2seq", tmp_path / "ckpt")
    for step in range(1, 7):
        control = saver.on_step_end(None, _state(step), _control())
        assert control.should_save is (step in (2, 4))
        saver.on_save(None, _state(step), control, model=_Saving(), processing_class=_Saving())
    assert sorted(p.name for p in (tmp_path / "ckpt/candidates").iterdir()) == ["step-2", "step-4"]
    out = tmp_path / "out" / "candidates"
    collect_candidates(tmp_path / "ckpt", out, final_step=4, select=[2, 4, 9])  # step 4 is the final model
    assert json.loads((out / "index.json").read_text())["steps"] == [2]
    assert candidate_models(out, tmp_path / "final") == [(2, out / "step-2"), (4, tmp_path / "final")]
    epoch = CandidateSaver("epoch", "causal", tmp_path / "e")
    assert epoch.on_epoch_end(None, _state(3), _control()).should_save is True
    assert epoch.on_step_end(None, _state(3), _control()).should_save is False


def test_the_checkpoint_choice_names_the_candidate_and_refuses_a_changed_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the choice names the directory as the workflow does: relative to the repo root
    model = Path("results/train/tiny-bart/default/candidates/step-2")
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub/w.bin").write_bytes(b"\x00weights")
    expected = hashlib.sha256(b"config.json\0" + b'{"a": 1}' + b"\0" + b"sub/w.bin\0" + b"\x00weights" + b"\0")
    choice = checkpoint_choice("tiny-bart/default", 2, model)
    assert choice == {
        "system": "tiny-bart/default",
        "step": 2,
        "path": model.as_posix(),
        "sha256": expected.hexdigest(),
    }
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps(choice))
    cfg = load_config(ROOT / "config.yaml")
    assert chosen_model_dir(spec_for(cfg, "model/tiny-bart/default"), path) == model
    with pytest.raises(SelectionError, match="not of 'tiny-llama/default'"):
        chosen_model_dir(spec_for(cfg, "model/tiny-llama/default"), path)
    (model / "sub/w.bin").write_bytes(b"\x01weights")  # retrained under the same name: not the chosen model
    with pytest.raises(SelectionError, match="not the chosen model; rerun select-checkpoint"):
        chosen_model_dir(spec_for(cfg, "model/tiny-bart/default"), path)


def test_checkpoint_table_pairs_loss_and_rouge_and_marks_the_best():
    history = pd.DataFrame({"step": [1, 10, 20, 30], "loss": [5.0, 3.0, 2.0, 1.5]})
    scores = [{"rouge1": 0, "rouge2": 0, "rougeL": 0, "rouge_sum": v, "n": 10} for v in (30.0, 60.0, 45.0)]
    df = checkpoint_table([10, 25, 30], scores, history)
    assert df["loss"].tolist() == [3.0, 2.0, 1.5]
    assert df.loc[df["chosen"], "step"].tolist() == [25] and df.loc[1, "final"] == 20.0


# --------------------------------------------------------------------------------------------- summary
def test_summary_reports_the_report_rows_score_and_refuses_tuning_scores(tmp_path):
    cfg = load_config(ROOT / "config.yaml")
    spec = spec_for(cfg, "summary")
    assert spec.decoding == ["greedy", "sample"]
    n = len(spec.systems)
    tuned = [s for s in spec.systems if s.kind == "fine-tuned"]
    full = {"n": 24, "rouge1": 10, "rouge2": 5, "rougeL": 9, "rouge_sum": 24.0}
    score = tmp_path / "dev.json"
    score.write_text(json.dumps(full))
    metrics = tmp_path / "train_metrics.json"
    metrics.write_text("{}")
    base = tmp_path / "base.json"
    base.write_text("{}")
    choice = tmp_path / "decoding.json"
    choice.write_text(json.dumps({"setting": "beam4"}))
    built = [s for s in spec.systems if s.kind == "zero-shot" and s.built]

    def inputs(report: Path) -> SummaryInputs:
        return SummaryInputs(
            scores=[score] * n,
            train_metrics=[metrics] * len(tuned),
            log_histories=[metrics] * len(tuned),
            base_metrics=[base] * len(built),
            report_scores=[report] * len(tuned),
            decodings=[choice] * len(tuned),
        )

    df = summary_table(spec, inputs(_scores(tmp_path, "r", 36.0, part=REPORT))).set_index("system")
    assert df.loc["tiny-bart/default", "final_report"] == 12.0 and df.loc["tiny-bart/default", "decoding"] == "beam4"
    assert pd.isna(df.loc["baseline/lead", "final_report"])
    assert list(df.columns).index("final") < list(df.columns).index("final_report")
    with pytest.raises(SummaryError, match="not a score of the dev set's report rows"):
        summary_table(spec, inputs(_scores(tmp_path, "t", 36.0, part=TUNING)))
    with pytest.raises(SummaryError, match="--report-scores"):
        summary_table(spec, dataclasses.replace(inputs(score), report_scores=[]))
