"""MBR ensembles (kdsum.selection.mbr), their config checks, and the paired bootstrap against the best single system."""

import numpy as np
import pandas as pd
import pytest

from kdsum.config.catalog import spec_for
from kdsum.config.files import ConfigError
from kdsum.config.resolve import load_config, systems
from kdsum.errors import KdsumError
from kdsum.reporting.comparisons import best_of, markdown, paired_against_best
from kdsum.selection.mbr import mbr_predictions, select, utilities

# The middle candidate shares most with both others: "사과 배 포도" is the consensus of these three.
LONG, MIDDLE, SHORT = "사과 배 포도 딸기", "사과 배 포도", "사과 배"


def test_mbr_picks_the_consensus_candidate_in_any_member_order():
    for order in ([LONG, MIDDLE, SHORT], [SHORT, LONG, MIDDLE], [MIDDLE, SHORT, LONG]):
        u = utilities([order])
        assert order[select(u)[0]] == MIDDLE, (order, u)


def test_mbr_utility_is_the_mean_final_against_the_others():
    # unigram F1 of LONG vs MIDDLE is 2*(3/3)*(3/4)/(1+3/4) = 6/7; by hand for ROUGE-2 and -L below
    u = utilities([[LONG, MIDDLE, SHORT]])[0]
    f = {  # (R1, R2, RL) F1 of each pair
        ("L", "M"): (6 / 7, 2 * 1 * (2 / 3) / (1 + 2 / 3), 6 / 7),
        ("L", "S"): (2 * 1 * 0.5 / 1.5, 2 * 1 * (1 / 3) / (1 + 1 / 3), 2 * 1 * 0.5 / 1.5),
        ("M", "S"): (0.8, 2 * 1 * 0.5 / 1.5, 0.8),
    }
    final = {k: 100 * sum(v) / 3 for k, v in f.items()}
    expected = [
        (final["L", "M"] + final["L", "S"]) / 2,
        (final["L", "M"] + final["M", "S"]) / 2,
        (final["L", "S"] + final["M", "S"]) / 2,
    ]
    np.testing.assert_allclose(u, expected, rtol=1e-12)


def test_ties_go_to_the_member_listed_first():
    # identical candidates tie exactly; the earlier one wins, whichever position the pair is in
    assert select(utilities([["오늘 날씨", "회의 일정 변경", "회의 일정 변경"]]))[0] == 1
    assert select(utilities([["회의 일정 변경", "오늘 날씨", "회의 일정 변경"]]))[0] == 0
    # every candidate unrelated to the others: all utilities 0, the first member
    assert select(utilities([["가방", "하늘", "바다"]]))[0] == 0
    assert select(np.array([[1.0, 1.0 + 1e-13, 0.5]]))[0] == 0  # float noise below the rounding still ties


def _write(path, fnames, texts):
    pd.DataFrame({"fname": fnames, "summary": texts}).to_csv(path, index=False)
    return path


def test_mbr_predictions_from_files_name_the_chosen_member(tmp_path):
    f = ["d1", "d2"]
    paths = [
        _write(tmp_path / "a.csv", f, [LONG, "회의 일정 변경"]),
        _write(tmp_path / "b.csv", f[::-1], ["회의 일정 변경", MIDDLE]),  # other row order: paired on fname
        _write(tmp_path / "c.csv", f, [SHORT, "오늘 날씨"]),
    ]
    out = mbr_predictions(["m/a", "m/b", "m/c"], paths)
    assert list(out["fname"]) == f
    assert list(out["summary"]) == [MIDDLE, "회의 일정 변경"]
    assert list(out["system"]) == ["m/b", "m/a"]  # d2: a and b tie, a is listed first
    _write(tmp_path / "c.csv", ["d1", "d3"], [SHORT, "오늘 날씨"])
    with pytest.raises(KdsumError, match=r"c\.csv: fnames differ"):
        mbr_predictions(["m/a", "m/b", "m/c"], paths)


def test_config_ensembles_become_systems_and_unknown_members_are_refused(repo_root):
    cfg = load_config(repo_root / "config.yaml")
    names = [s.name for s in systems(cfg)]
    for e, entry in cfg["ensembles"].items():
        assert f"ensemble/{e}" in names
        assert spec_for(cfg, f"ensemble/{e}").systems == entry["systems"]
    with pytest.raises(ConfigError, match=r"key 'ensembles\.x\.systems\[1\]': 'tiny-lama/default' is not a system"):
        load_config(
            repo_root / "config.yaml", {"ensembles": {"x": {"systems": ["baseline/lead", "tiny-lama/default", "a/b"]}}}
        )
    with pytest.raises(ConfigError, match=r"ensembles\.x\.systems"):  # two members always tie: refused
        load_config(repo_root / "config.yaml", {"ensembles": {"x": {"systems": ["baseline/lead", "baseline/longest"]}}})
    # a member outside the run (another variant, a model left out) leaves the ensemble out, as one-model runs need
    out = {"ensembles": {"x": {"systems": ["tiny-bart/default", "tiny-llama/lr-1e-4", "baseline/lead"]}}}
    assert "ensemble/x" not in [s.name for s in systems(load_config(repo_root / "config.yaml", out))]
    one = load_config(repo_root / "config.yaml", {"run": {"models": ["tiny-llama"]}})
    assert not [s for s in systems(one) if s.kind == "ensemble"]
    with pytest.raises(ConfigError, match="unknown spec"):
        spec_for(one, "ensemble/mbr")


def test_paired_bootstrap_against_the_best_single_system(tmp_path):
    rng = np.random.default_rng(1)
    fnames = [f"d{i}" for i in range(40)]
    base = rng.uniform(20, 80, size=(40, 3))
    shifts = {"a/x": 0.0, "b/x": -6.0, "ensemble/e": 3.0}  # per-item shift of every ROUGE
    items, finals = {}, {}
    for name, shift in shifts.items():
        s = base + shift + (rng.normal(0, 1, size=base.shape) if shift else 0)
        df = pd.DataFrame({"fname": fnames, "rouge1": s[:, 0], "rouge2": s[:, 1], "rougeL": s[:, 2]})
        df["rouge_sum"] = s.sum(axis=1)
        items[name] = tmp_path / f"{name.replace('/', '_')}.csv"
        df.sample(frac=1, random_state=0).to_csv(items[name], index=False)  # rows shuffled: paired on fname
        finals[name] = s.mean()
    summary = pd.DataFrame(
        {"system": list(shifts), "kind": ["fine-tuned", "fine-tuned", "ensemble"], "final": list(finals.values())}
    )
    out = paired_against_best(summary, items, n_resamples=500, seed=0).set_index("system")
    assert (out["vs_best"] == "a/x").all()  # the ensemble is better but is not a single system
    assert out.loc["a/x", "diff_vs_best"] == 0
    for name in ("b/x", "ensemble/e"):
        assert out.loc[name, "diff_vs_best"] == pytest.approx(finals[name] - finals["a/x"], abs=1e-9)
        assert out.loc[name, "diff_vs_best_lo"] < out.loc[name, "diff_vs_best"] < out.loc[name, "diff_vs_best_hi"]
    assert out.loc["ensemble/e", "p_not_better"] < 0.01 and out.loc["b/x", "p_not_better"] > 0.99
    md = markdown(out.reset_index())
    assert "best single system (a/x)" in md and "| ensemble/e |" in md


def test_best_of_takes_the_first_on_a_tie_and_skips_nan():
    assert best_of({"a": 1.0, "b": 2.0, "c": 2.0}) == "b"
    assert best_of({"a": float("nan"), "b": 0.5}) == "b"
