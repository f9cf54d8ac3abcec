"""Competition readiness: contamination-aware scores (final_clean), degenerate output flagged and never submitted,
the best-system submission in sample_submission.csv's format, and (integration) a run on the organisers' files."""

from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from conftest import copy_repo, run_snakemake

from kdsum.config.spec import DEGENERATE_SHARE, EvaluationArgs, SummarySpec, SystemRow, to_json
from kdsum.data.ingest import ingest_splits, load_split
from kdsum.generation.baselines import run_baseline
from kdsum.io import write_jsonl
from kdsum.reporting.submission import (
    HEADER,
    SubmissionError,
    build_submission,
    check_submission_text,
    write_submission,
)
from kdsum.reporting.summary import SummaryInputs, write_summary
from kdsum.scoring.bootstrap import corpus_summary
from kdsum.scoring.evaluate import evaluate
from kdsum.scoring.metrics import degenerate_warning, output_diversity, repetition
from kdsum.selection.tuning import REPORT, part_fnames
from kdsum.stages import best_submission

ROOT = Path(__file__).resolve().parents[1]
KO = ROOT.parent / "shared" / "data" / "ko"

# Eight dialogues of distinct content; each reference names its scenario, so a copy of one utterance scores little.
SCENES = [
    ("병원", "오늘 머리가 너무 아파서 병원에 가야겠어요.", "약 먹고 푹 쉬세요."),
    ("은행", "통장을 새로 만들고 싶은데 신분증이 필요한가요?", "네, 신분증을 가져오세요."),
    ("식당", "두 명 자리 있나요? 창가 쪽이면 좋겠어요.", "잠시만 기다려 주세요."),
    ("공항", "비행기가 두 시간 지연된다고 방송이 나왔어요.", "라운지에서 기다리죠."),
    ("학교", "내일 시험 범위가 어디까지인지 알려 줄래?", "삼 장까지야."),
    ("서점", "요즘 인기 있는 소설책을 추천해 주실 수 있나요?", "이 책이 잘 팔려요."),
    ("이사", "다음 달에 이사를 하는데 짐 싸는 것 좀 도와줄래?", "물론이지, 토요일에 갈게."),
    ("운동", "매일 아침 공원에서 달리기를 시작했어요.", "건강에 좋겠네요."),
]


def _records(split: str) -> list[dict]:
    out = []
    for i, (place, a, b) in enumerate(SCENES):
        turns = [{"speaker": "#Person1#", "text": a}, {"speaker": "#Person2#", "text": b}]
        out.append(
            {
                "fname": f"{split}_{i}",
                "dialogue": "\n".join(f"{t['speaker']}: {t['text']}" for t in turns),
                "turns": turns,
                "summaries": [f"#Person1#은 {place}에 관해 #Person2#와 이야기한다."] if split == "dev" else [],
                "topic": None,
                "near_dup_train": i < 3,  # as ingest flags a dev row with a near-duplicate in train
            }
        )
    return out


def _predictions(path: Path, records: list[dict], texts: list[str]) -> Path:
    pd.DataFrame({"fname": [r["fname"] for r in records], "summary": texts}).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- degenerate output


def test_output_diversity_counts_one_text_and_copies() -> None:
    dialogues = ["#Person1#: 안녕 하세요\n#Person2#: 네", "#Person1#: 밥 먹었어?", "#Person1#: 가자", "#Person1#: 응"]
    # spacing and punctuation do not make a text distinct; an utterance with its tag is a copy (whitespace collapsed)
    preds = ["#Person1#: 안녕  하세요", "같은 요약.", "같은  요약", ""]
    got = output_diversity(preds, dialogues)
    assert got == {"distinct_share": 3 / 4, "top_share": 2 / 4, "copied_share": 1 / 4}
    assert output_diversity(["a"] * 4, dialogues)["top_share"] == 1.0
    # the predict, baseline and evaluate logs' warning: at the threshold and above, never below
    warned = degenerate_warning("baseline/x dev", repetition(["요약.", "요약", "다른 요약", "셋"]), 0.5)
    assert warned == (
        "warning: baseline/x dev: one text is 50% of the predictions (distinct 75%; evaluation.degenerate_share 0.5): "
        "degenerate output, never the submitted system"
    )
    assert degenerate_warning("x", repetition(["a", "b", "c", "a"]), 0.51) is None
    with pytest.raises(ValueError, match="3 predictions for 4 dialogues"):
        output_diversity(preds[:3], dialogues)


def test_schema_default_degenerate_share_is_the_spec_default() -> None:
    import yaml

    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    evaluation = schema["properties"]["evaluation"]["properties"]
    assert (
        evaluation["degenerate_share"]["default"] == DEGENERATE_SHARE == EvaluationArgs("mean", 0, 0).degenerate_share
    )


# --------------------------------------------------------------------------- final_clean


def test_clean_score_is_the_score_of_the_unflagged_rows(tmp_path: Path) -> None:
    dev = _records("dev")
    write_jsonl(tmp_path / "dev.jsonl", dev)
    write_jsonl(tmp_path / "clean.jsonl", [r for r in dev if not r["near_dup_train"]])
    texts = run_baseline("longest", dev)
    preds = _predictions(tmp_path / "p.csv", dev, texts)
    result, _ = evaluate(preds, tmp_path / "dev.jsonl", n_bootstrap=50, seed=3)
    # independent: the clean rows alone, as their own files
    clean = [(r, t) for r, t in zip(dev, texts, strict=True) if not r["near_dup_train"]]
    alone_preds = _predictions(tmp_path / "clean.csv", [r for r, _ in clean], [t for _, t in clean])
    alone, items = evaluate(alone_preds, tmp_path / "clean.jsonl", n_bootstrap=50, seed=3)
    assert result["n_near_dup_train"] == 3 and result["n_clean"] == 5 == alone["n"]
    assert result["rouge_sum_clean"] == pytest.approx(alone["rouge_sum"])
    assert result["rouge_sum_clean_ci"] == pytest.approx(alone["rouge_sum_ci"])
    assert result["rouge_sum_clean"] == pytest.approx(items["rouge_sum"].mean())
    assert alone["rouge_sum_ci"] == pytest.approx(
        corpus_summary(pd.DataFrame({k: items[k] / 100 for k in ("rouge1", "rouge2", "rougeL")}), 50, 3)["rouge_sum_ci"]
    )
    # a references file without flags (or with none set) has no clean score
    write_jsonl(tmp_path / "plain.jsonl", [{**r, "near_dup_train": False} for r in dev])
    assert "rouge_sum_clean" not in evaluate(preds, tmp_path / "plain.jsonl", n_bootstrap=0)[0]


def test_summary_reports_final_clean_and_warns_of_a_degenerate_system(tmp_path: Path) -> None:
    dev = _records("dev")
    write_jsonl(tmp_path / "dev.jsonl", dev)
    systems = {"baseline/longest": run_baseline("longest", dev), "baseline/constant": ["#Person1#은 이야기한다."] * 8}
    scores = []
    for name, texts in systems.items():
        result, _ = evaluate(
            _predictions(tmp_path / f"{name[9:]}.csv", dev, texts), tmp_path / "dev.jsonl", n_bootstrap=20
        )
        scores.append(tmp_path / f"{name[9:]}.json")
        scores[-1].write_text(json.dumps(result), encoding="utf-8")
    spec = SummarySpec(split="dev", systems=[SystemRow(n, "baseline", n[9:], "baseline") for n in systems], bootstrap=0)
    out = tmp_path / "summary"
    df = write_summary(spec, SummaryInputs(scores=scores), out.with_suffix(".csv"), out.with_suffix(".md"),
                       tmp_path / "s.png", tmp_path / "l.png")  # fmt: skip
    table = pd.read_csv(out.with_suffix(".csv")).set_index("system")
    for name in systems:
        own = json.loads((tmp_path / f"{name[9:]}.json").read_text(encoding="utf-8"))
        assert table.loc[name, "final_clean"] == pytest.approx(own["rouge_sum_clean"] / 3)
        assert table.loc[name, "n_clean"] == 5 and table.loc[name, "n_near_dup_train"] == 3
    assert list(table["degenerate"]) == [s == "baseline/constant" for s in df["system"]]
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| final | final_clean |" in md
    assert "over the 5 dev rows without a near-duplicate in train; 3 of 8 dev rows have one" in md
    assert "**Warning: baseline/constant is degenerate**: one text is 100% of its dev predictions" in md
    assert "longest is degenerate" not in md


# --------------------------------------------------------------------------- the best-system submission


def _sample_order() -> list[str]:
    return [r["fname"] for r in _records("test")]


def test_submission_text_is_checked_before_it_is_written(tmp_path: Path) -> None:
    order = _sample_order()
    frame = pd.DataFrame({"fname": order, "summary": ["요약"] * 8})
    good = frame.to_csv(index=True, lineterminator="\n")
    check_submission_text(good, order)
    assert good.startswith(HEADER + "\n0,test_0,요약\n")
    for bad, why in (
        (good.replace(HEADER, "id,fname,summary", 1), "header"),
        (frame.iloc[::-1].to_csv(index=True, lineterminator="\n"), "index column"),
        (frame.iloc[::-1].reset_index(drop=True).to_csv(index=True, lineterminator="\n"), "not the test data's"),
        (good.replace("요약", unicodedata.normalize("NFD", "요약"), 1), "not in NFC"),
    ):
        with pytest.raises(SubmissionError, match=why):
            check_submission_text(bad, order)
    write_jsonl(tmp_path / "test.jsonl", _records("test"))
    with pytest.raises(SubmissionError, match="not the test data's"):
        write_submission(frame.iloc[:-1], tmp_path / "short.csv", tmp_path / "test.jsonl")
    assert not (tmp_path / "short.csv").exists()


def test_nfd_predictions_are_submitted_in_nfc(tmp_path: Path) -> None:
    test = _records("test")
    write_jsonl(tmp_path / "test.jsonl", test)
    preds = _predictions(tmp_path / "p.csv", test, [unicodedata.normalize("NFD", "병원 이야기")] * 8)
    write_submission(build_submission(preds, tmp_path / "test.jsonl"), tmp_path / "s.csv", tmp_path / "test.jsonl")
    assert pd.read_csv(tmp_path / "s.csv")["summary"].tolist() == ["병원 이야기"] * 8


def _best_submission(tmp_path: Path, systems: dict[str, tuple[list[str], list[str]]]) -> dict:
    """Run `kdsum best-submission` (in-process) on systems name -> (dev texts, test texts); submission.json."""
    dev, test = _records("dev"), _records("test")
    write_jsonl(tmp_path / "dev.jsonl", dev)
    write_jsonl(tmp_path / "test.jsonl", test)
    (tmp_path / "evaluation.json").write_text(to_json(EvaluationArgs("mean", 0, 0)), encoding="utf-8")
    args = {"--systems": [], "--scores": [], "--items": [], "--predictions": []}
    for name, (dev_texts, test_texts) in systems.items():
        result, items = evaluate(_predictions(tmp_path / f"{name}-dev.csv", dev, dev_texts), tmp_path / "dev.jsonl",
                                 n_bootstrap=0)  # fmt: skip
        (tmp_path / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")
        items.to_csv(tmp_path / f"{name}_items.csv", index=False)
        _predictions(tmp_path / f"{name}-test.csv", test, test_texts)
        for option, path in zip(args, (name, f"{name}.json", f"{name}_items.csv", f"{name}-test.csv"), strict=True):
            args[option].append(path if option == "--systems" else str(tmp_path / path))
    best_submission.main(
        ["--evaluation-spec", str(tmp_path / "evaluation.json"), *[x for k, v in args.items() for x in (k, *v)],
         "--data", str(tmp_path / "test.jsonl"), "--out-csv", str(tmp_path / "submission.csv"),
         "--out-json", str(tmp_path / "submission.json")]
    )  # fmt: skip
    return json.loads((tmp_path / "submission.json").read_text(encoding="utf-8"))


def test_a_constant_system_is_never_the_submission(tmp_path: Path) -> None:
    dev, test = _records("dev"), _records("test")
    # a constant predictor: one string for every dialogue, close to every reference; it scores best on dev
    constant = ["#Person1#은 #Person2#와 이야기한다."] * 8
    chosen = _best_submission(
        tmp_path,
        {"constant": (constant, constant), "lead": (run_baseline("lead", dev), run_baseline("lead", test))},
    )
    rows = {r["system"]: r for r in chosen["candidates"]}
    assert rows["constant"]["final_report"] > rows["lead"]["final_report"]
    assert rows["constant"]["degenerate_dev"] and rows["constant"]["degenerate_test"]
    assert chosen["system"] == "lead" and "not degenerate" in chosen["selection"]
    submitted = pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False)
    assert submitted["summary"].tolist() == run_baseline("lead", test)
    # final_report: the report rows' mean, computed here from the items file
    items = pd.read_csv(tmp_path / "lead_items.csv")
    report = part_fnames(items["fname"], 0.5, REPORT)
    assert chosen["final_report"] == pytest.approx(items.set_index("fname").loc[report, "rouge_sum"].mean() / 3)


def test_a_system_degenerate_on_test_only_is_not_submitted(tmp_path: Path) -> None:
    dev, test = _records("dev"), _records("test")
    good = run_baseline("longest", dev)
    chosen = _best_submission(
        tmp_path,
        {"collapses": (good, ["요약"] * 8), "lead": (run_baseline("lead", dev), run_baseline("lead", test))},
    )
    rows = {r["system"]: r for r in chosen["candidates"]}
    assert not rows["collapses"]["degenerate_dev"] and rows["collapses"]["degenerate_test"]
    assert chosen["system"] == "lead"
    with pytest.raises(SubmissionError, match="every candidate system is degenerate"):
        _best_submission(tmp_path, {"collapses": (["요약"] * 8, ["요약"] * 8)})


@pytest.mark.integration
def test_real_sample_submission_format(tmp_path: Path) -> None:
    if not KO.exists():
        pytest.skip(f"real data not found at {KO} (a user's clone has no ../shared)")
    ingest_splits({"train": str(KO / "train_subset_2500.csv"), "test": str(KO / "test.csv")}, tmp_path / "data")
    test = load_split(tmp_path / "data" / "test.jsonl")
    sample = (KO / "sample_submission.csv").read_text(encoding="utf-8")
    check_submission_text(sample, [r["fname"] for r in test], "sample_submission.csv")
    preds = _predictions(tmp_path / "p.csv", test, run_baseline("longest", test))
    data = tmp_path / "data" / "test.jsonl"
    write_submission(build_submission(preds, data), tmp_path / "s.csv", data)
    ours, theirs = pd.read_csv(tmp_path / "s.csv"), pd.read_csv(KO / "sample_submission.csv")
    assert list(ours.columns) == list(theirs.columns) and ours["fname"].tolist() == theirs["fname"].tolist()
    assert (tmp_path / "s.csv").read_text(encoding="utf-8").split("\n", 1)[0] == sample.split("\n", 1)[0]


# The fast test overlay with the organisers' files as data and no leakage setting. The --config overrides only make
# the run cheaper (one tiny model, no zero-shot rows, no checkpoint or decoding search, one baseline); they change
# no policy.
CHEAP = ["run__models=[tiny-bart]", "run__zero_shot=False", "models__tiny-bart__train__select_checkpoints=none",
         "baselines=[longest]", "decoding__grid={}"]  # fmt: skip


@pytest.mark.integration
def test_a_run_on_the_organisers_files_ends_in_a_submission(tmp_path: Path) -> None:
    if not KO.exists():
        pytest.skip(f"real data not found at {KO} (a user's clone has no ../shared)")
    work = copy_repo(tmp_path / "work")
    (work / "ko.yaml").write_text(
        f"data: {{train: {KO / 'train_subset_2500.csv'}, dev: {KO / 'dev.csv'}, test: {KO / 'test.csv'}}}\n",
        encoding="utf-8",
    )
    start = time.time()
    run_snakemake(
        work, "--cores", "1", "--configfile", "tests/fixtures/config.fast.yaml", "ko.yaml", "--config", *CHEAP
    )
    print(f"\ncompetition run: {time.time() - start:.1f} s")
    stats = json.loads((work / "results/data/stats.json").read_text(encoding="utf-8"))
    flagged = stats["near_dup_train"]["dev"]
    assert stats["leakage_policy"] == "report" and flagged > 0
    # the submission: sample_submission.csv's format, the best non-degenerate system on the report rows
    sample = (KO / "sample_submission.csv").read_text(encoding="utf-8")
    ours = (work / "results/submission.csv").read_text(encoding="utf-8")
    theirs = pd.read_csv(KO / "sample_submission.csv", dtype=str, keep_default_na=False)
    check_submission_text(ours, theirs["fname"].tolist(), "results/submission.csv")
    assert ours.split("\n", 1)[0] == sample.split("\n", 1)[0] and len(ours.splitlines()) == len(sample.splitlines())
    chosen = json.loads((work / "results/submission.json").read_text(encoding="utf-8"))
    candidates = {r["system"]: r for r in chosen["candidates"]}
    assert set(candidates) == {"tiny-bart/default", "baseline/longest"}
    sound = [r for r in candidates.values() if not (r["degenerate_dev"] or r["degenerate_test"])]
    assert chosen["final_report"] == max(r["final_report"] for r in sound)
    submitted = pd.read_csv(work / "results/submission.csv", dtype=str, keep_default_na=False)
    predicted = pd.read_csv(work / f"results/predictions/{chosen['system']}/test.csv", dtype=str, keep_default_na=False)
    assert submitted["summary"].tolist() == [unicodedata.normalize("NFC", t) for t in predicted["summary"]]
    # the summary: final_clean beside final, over the rows ingest did not flag
    summary = pd.read_csv(work / "results/summary.csv").set_index("system")
    assert (summary["n_near_dup_train"] == flagged).all() and (summary["n_clean"] == 499 - flagged).all()
    assert summary["final_clean"].notna().all()
    md = (work / "results/summary.md").read_text(encoding="utf-8")
    assert (
        f"{flagged} of 499 dev rows have one" in md
        and f"Submitted (results/submission.csv): **{chosen['system']}**" in md
    )
    for name, row in candidates.items():
        assert (f"**Warning: {name} is degenerate**" in md) == row["degenerate_dev"]
