"""Tests for kdsum.data.ingest (ingestion) and the ``kdsum ingest`` stage, on real files on disk.

Fixtures live in tests/fixtures/data/: one small malformed file per refusal, plus
byte-level encoding variants produced by tests/fixtures/data/make_fixtures.py.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import yaml

from kdsum.config.spec import DataSpec, to_json
from kdsum.data.ingest import (
    NORMALISATIONS,
    DataError,
    collect_special_tokens,
    ingest_splits,
    load_split,
    normalize_dialogue,
    parse_turns,
    read_split,
    split_stats,
)
from kdsum.data.leakage import LEAKAGE_POLICIES, NEAR_DUPLICATE_THRESHOLD
from kdsum.errors import KdsumError

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures" / "data"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def fx(name: str) -> str:
    return str(FIX / name)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


# --------------------------------------------------------------------------- refusals

REFUSALS = {
    "missing_column": (
        {"train": "missing_column.csv"},
        ["missing_column.csv", "missing required column(s) summary", "columns found: fname, dialogue, topic"],
    ),
    "dev_without_summary": (
        {"train": "plain_utf8.csv", "dev": "test_no_summary.csv"},
        ["test_no_summary.csv", "summary (or summary1)", "'dev'", "columns found: fname, dialogue"],
    ),
    "empty_dialogue": (
        {"train": "empty_dialogue.csv"},
        ["empty_dialogue.csv", "row 2", "'train_2'", "column 'dialogue'", "empty dialogue"],
    ),
    "empty_summary": (
        {"train": "empty_summary.csv"},
        ["empty_summary.csv", "row 2", "'train_2'", "column 'summary'", "empty summary"],
    ),
    "empty_summary_k": (
        {"train": "plain_utf8.csv", "dev": "empty_summary_k.csv"},
        ["empty_summary_k.csv", "row 2", "'dev_2'", "column 'summary2'", "empty summary"],
    ),
    "duplicate_fname": (
        {"train": "duplicate_fname.csv"},
        ["duplicate_fname.csv", "duplicate fname 'train_1'", "rows 1 and 3"],
    ),
    "no_speaker_tag": (
        {"train": "no_speaker_tag.csv"},
        ["no_speaker_tag.csv", "row 2", "'train_2'", "column 'dialogue'", "no speaker tag"],
    ),
    "leakage_train_dev": (
        {"train": "plain_utf8.csv", "dev": "leak_dev.csv"},
        ["leakage", "'dev_7'", "'train_c'", "leak_dev.csv", "plain_utf8.csv", "1 such pair(s) between train and dev"],
    ),
    "leakage_dev_test": (
        {"train": "plain_utf8.csv", "dev": "dev_multi_ref.csv", "test": "leak_test.csv"},
        ["leakage", "'test_9'", "'dev_2'", "leak_test.csv", "dev_multi_ref.csv", "between dev and test"],
    ),
    "csv_extra_field": (
        {"train": "malformed_extra_field.csv"},
        ["malformed_extra_field.csv", "malformed CSV", "data row 2", "5 fields", "header has 4"],
    ),
    "csv_bad_quote": (
        {"train": "malformed_quote.csv"},
        ["malformed_quote.csv", "malformed CSV", "data row 2"],
    ),
    "undecodable": (
        {"train": "undecodable.csv"},
        ["undecodable.csv", "cannot decode", "0xff", "line 4"],
    ),
    "jsonl_bad_line": (
        {"train": "malformed.jsonl"},
        ["malformed.jsonl", "line 2", "malformed JSON"],
    ),
    "unknown_extension": (
        {"train": "unknown_extension.tsv"},
        ["unknown_extension.tsv", "unknown file extension '.tsv'"],
    ),
    "header_only": (
        {"train": "header_only.csv"},
        ["header_only.csv", "no data rows"],
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusal_names_location_and_writes_nothing(case: str, tmp_path: Path) -> None:
    files, expected = REFUSALS[case]
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        ingest_splits({split: fx(name) for split, name in files.items()}, out)
    message = str(err.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert_nothing_written(out)


def test_refused_run_leaves_previous_output_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_splits({"train": fx("plain_utf8.csv")}, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError):
        ingest_splits({"train": fx("plain_utf8.csv"), "dev": fx("leak_dev.csv")}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_train_is_required_and_splits_are_known(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train file is required"):
        ingest_splits({"dev": fx("dev_multi_ref.csv")}, tmp_path / "out")
    with pytest.raises(DataError, match="unknown split"):
        ingest_splits({"train": fx("plain_utf8.csv"), "valid": fx("dev_multi_ref.csv")}, tmp_path / "out")
    with pytest.raises(DataError, match="file not found"):
        ingest_splits({"train": fx("no_such_file.csv")}, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- encodings & formats


def test_fixture_bytes_match_generator() -> None:
    spec = importlib.util.spec_from_file_location("make_fixtures", FIX / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    for name, data in module.build().items():
        assert (FIX / name).read_bytes() == data, f"{name} is stale; run make_fixtures.py"
    assert (FIX / "bom_crlf.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert b"\r\n" in (FIX / "bom_crlf.csv").read_bytes()


@pytest.mark.parametrize(("name", "encoding"), [("plain_cp949.csv", "cp949"), ("bom_crlf.csv", "utf-8-sig")])
def test_encodings_ingest_to_identical_records(name: str, encoding: str, tmp_path: Path) -> None:
    ref_stats = ingest_splits({"train": fx("plain_utf8.csv")}, tmp_path / "ref")
    stats = ingest_splits({"train": fx(name)}, tmp_path / "alt")
    assert load_split(tmp_path / "alt" / "train.jsonl") == load_split(tmp_path / "ref" / "train.jsonl")
    assert (tmp_path / "alt" / "train.jsonl").read_bytes() == (tmp_path / "ref" / "train.jsonl").read_bytes()
    assert ref_stats["splits"]["train"]["encoding"] == "utf-8"
    assert stats["splits"]["train"].pop("encoding") == encoding
    ref_stats["splits"]["train"].pop("encoding")
    assert stats["splits"]["train"] == ref_stats["splits"]["train"]
    assert "\r" not in (tmp_path / "alt" / "train.jsonl").read_text(encoding="utf-8").replace("\\r", "")


def test_jsonl_dialogsum_style_multi_reference() -> None:
    records = read_split(fx("dialogsum_multi.jsonl"), "test")
    assert [len(r["summaries"]) for r in records] == [3, 3]
    first = records[0]
    assert first["summaries"] == [
        "#Person2# gives #Person1# the date of birth.",
        "#Person1# asks for #Person2#'s birthday.",
        "#Person2# tells #Person1# the date of birth.",  # whitespace collapsed and stripped
    ]
    assert first["topic"] == "registration"  # topic1
    assert [t["speaker"] for t in first["turns"]] == ["#Person1#", "#Person2#", "#Person1#"]


def test_csv_multi_reference_and_test_without_references(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_splits(
        {"train": fx("plain_utf8.csv"), "dev": fx("dev_multi_ref.csv"), "test": fx("test_no_summary.csv")}, out
    )
    dev = load_split(out / "dev.jsonl")
    assert [len(r["summaries"]) for r in dev] == [2, 2]
    assert dev[0]["topic"] == "약속"  # topic1
    test = load_split(out / "test.jsonl")
    assert [r["summaries"] for r in test] == [[], []]
    assert [r["topic"] for r in test] == [None, None]
    # ingest adds near_dup_train to dev and test rows (data.leakage: report flags those with a near-duplicate in train)
    assert list(test[0]) == ["fname", "dialogue", "turns", "summaries", "topic", "near_dup_train"]


# --------------------------------------------------------------------------- turns & tokens


def test_turn_parsing_continuations_and_four_speakers() -> None:
    records = {r["fname"]: r for r in read_split(fx("plain_utf8.csv"), "train")}
    a = records["train_a"]
    assert a["turns"] == [
        {"speaker": "#Person1#", "text": "안녕하세요, 무엇을 도와드릴까요?"},
        {"speaker": "#Person2#", "text": "제 전화번호를 바꾸고 싶어요. 새 번호는 #PhoneNumber#입니다."},
        {"speaker": "#Person1#", "text": "네, 확인했습니다."},
    ]
    b = records["train_b"]
    assert {t["speaker"] for t in b["turns"]} == {"#Person1#", "#Person2#", "#Person3#", "#Person4#"}
    assert b["dialogue"] == (
        "#Person1#: 모두 모였나요?\n"
        "#Person2#: 네, 저 왔어요.\n"
        "#Person3#: 저도 왔어요.\n"
        "#Person4#: 제 생년월일은 #DateOfBirth#예요. 그래서 오늘 생일 파티를 해요.\n"
        "#Person1#: 축하해요!"
    )
    assert b["summaries"] == ["#Person4#의 생일(#DateOfBirth#)을 맞아 네 사람이 파티를 합니다."]
    # "#Person3#:이" (no space after the colon) is still a tag; output gets the canonical space.
    assert records["train_c"]["dialogue"].endswith("#Person3#: 이 주소로 보내 주세요.")


def test_parse_turns_edge_cases() -> None:
    # CR-only line ends, leading blanks before a tag, blank lines, "#Person1# :" is not a tag.
    turns = parse_turns("#Person1#: hi\r  #Person2#:  there \r\n\r\n#Person1# : still 2\n#Person10#:")
    assert turns == [
        {"speaker": "#Person1#", "text": "hi"},
        {"speaker": "#Person2#", "text": "there #Person1# : still 2"},
        {"speaker": "#Person10#", "text": ""},
    ]
    assert normalize_dialogue("#Person1#: a\n#Person2#:") == "#Person1#: a\n#Person2#:"
    with pytest.raises(DataError, match="before the first speaker tag"):
        parse_turns("intro\n#Person1#: hi")
    with pytest.raises(DataError, match="no speaker tag"):
        parse_turns("A: hi\nB: hello")


def test_collect_special_tokens_from_data() -> None:
    records = [
        *read_split(fx("plain_utf8.csv"), "train"),
        *read_split(fx("dev_multi_ref.csv"), "dev"),
        *read_split(fx("test_no_summary.csv"), "test"),
    ]
    assert collect_special_tokens(records) == [
        "#Person1#", "#Person2#", "#Person3#", "#Person4#",
        "#Address#", "#DateOfBirth#", "#Email#", "#PassportNumber#", "#PhoneNumber#",
    ]  # fmt: skip


def test_collect_special_tokens_ordering() -> None:
    records = [
        {"dialogue": "#Person10#: x #Zeta#\n#Person2#: y #PErson2#", "summaries": ["#Alpha# and #Person3#"]},
        {"dialogue": "#Person1#: z", "summaries": []},
    ]
    # Persons numerically (2 before 10), then masks alphabetically. "#PErson2#" is not a speaker tag (case) but
    # it is a data token of the one pattern (kdsum.korean.text), which scoring keeps whole: so it is a mask here too.
    assert collect_special_tokens(records) == [
        "#Person1#", "#Person2#", "#Person3#", "#Person10#", "#Alpha#", "#PErson2#", "#Zeta#",
    ]  # fmt: skip


def test_special_tokens_are_the_data_tokens_scoring_keeps_whole() -> None:
    # One pattern (kdsum.korean.text.DATA_TOKEN_PATTERN) for the tokenizer's special tokens and for scoring: a mask with
    # digits such as #Address2# reaches the tokenizer, and "#Person1# :" / "#a b#" / "#1#" are not tokens.
    from kdsum.korean.text import DATA_TOKEN_PATTERN
    from kdsum.scoring.metrics import MASK_PATTERN

    assert MASK_PATTERN == DATA_TOKEN_PATTERN
    records = [{"dialogue": "#Person1#: #Address2#로 와요 #1# #a b#", "summaries": ["#CardNumber# 확인"]}]
    assert collect_special_tokens(records) == ["#Person1#", "#Address2#", "#CardNumber#"]
    # and stats.json counts masks with the same pattern
    turns = [{"speaker": "#Person1#", "text": "#Address2#로 와요"}]
    record = {"fname": "x", "dialogue": "#Person1#: #Address2#로 와요", "turns": turns, "summaries": ["#Address2#"],
              "topic": None}  # fmt: skip
    assert split_stats([record])["masks"] == {"#Address2#": 2}


# --------------------------------------------------------------------------- outputs & stats


def test_stats_exact_on_tiny_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stats = ingest_splits({"train": fx("stats_tiny.csv")}, out)
    assert stats == json.loads((out / "stats.json").read_text(encoding="utf-8"))
    # s1: 2 turns, 27 chars; s2: 3 turns, 52 chars; s3: 2 turns (one continuation), 35 chars.
    assert stats["splits"]["train"] == {
        "rows": 3,
        "turns": {"mean": 2.333, "min": 2, "max": 3},
        "dialogue_chars": {"mean": 38.0, "max": 52},
        "summary_chars": {"mean": 6.0},  # "xyz", "#Person3# ok", "a b"
        "references_per_dialogue": {"max": 1},
        "speakers": {"2": 2, "3": 1},
        "speaker_tags": ["#Person1#", "#Person2#", "#Person3#"],
        "masks": {"#PhoneNumber#": 1},
        "topics": {"distinct": 2, "most_common": [{"topic": "A", "count": 2}, {"topic": "B", "count": 1}]},
        "duplicate_dialogues": 0,
        "format": "csv",
        "encoding": "utf-8",
        "normalisation": {"rows_changed": 0, **{k: {"rows": 0, "count": 0} for k in NORMALISATIONS}},
    }
    assert stats["special_tokens"] == ["#Person1#", "#Person2#", "#Person3#", "#PhoneNumber#"]
    assert stats["source_files"] == {"train": fx("stats_tiny.csv")}
    assert stats["source_sha256"] == {"train": hashlib.sha256((FIX / "stats_tiny.csv").read_bytes()).hexdigest()}
    assert stats["leakage"] == [] and stats["near_duplicate_threshold"] == NEAR_DUPLICATE_THRESHOLD
    records = load_split(out / "train.jsonl")
    assert [r["summaries"] for r in records] == [["xyz"], ["#Person3# ok"], ["a b"]]
    assert records[2]["dialogue"] == "#Person2#: hello world\n#Person1#: x"


def test_stats_for_split_without_references(tmp_path: Path) -> None:
    stats = ingest_splits({"train": fx("plain_utf8.csv"), "test": fx("test_no_summary.csv")}, tmp_path / "o")
    test = stats["splits"]["test"]
    assert test["summary_chars"] == {"mean": None}
    assert test["references_per_dialogue"] == {"max": 0}
    assert test["topics"] is None
    assert test["masks"] == {"#Email#": 1}


def test_stale_split_files_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_splits({"train": fx("plain_utf8.csv"), "dev": fx("dev_multi_ref.csv")}, out)
    assert (out / "dev.jsonl").exists()
    ingest_splits({"train": fx("plain_utf8.csv"), "dev": None}, out)
    assert sorted(p.name for p in out.iterdir()) == ["stats.json", "train.jsonl"]


def test_identical_dialogue_is_refused_unless_drop_train_removes_the_train_copy(tmp_path: Path) -> None:
    paths = {"train": fx("plain_utf8.csv"), "dev": fx("leak_dev.csv")}
    for policy in ("report", "refuse"):
        with pytest.raises(DataError, match="identical after normalisation to 'train_c'"):
            ingest_splits(paths, tmp_path / policy, leakage=policy)
    stats = ingest_splits(paths, tmp_path / "out", leakage="drop_train")
    assert stats["dropped_train"] == ["train_c"] and stats["splits"]["train"]["rows"] == 2
    assert "train_c" not in [r["fname"] for r in load_split(tmp_path / "out" / "train.jsonl")]
    assert stats["near_dup_train"] == {"dev": 0}
    assert stats["leakage"] == [
        {
            "splits": ["train", "dev"],
            "files": [fx("plain_utf8.csv"), fx("leak_dev.csv")],
            "shared_fnames": [],
            "pairs": [{"fnames": ["train_c", "dev_7"], "similarity": 1.0, "identical": True}],
        }
    ]


def test_load_split_rejects_raw_files() -> None:
    with pytest.raises(DataError, match="not a normalised record"):
        load_split(FIX / "dialogsum_multi.jsonl")


# --------------------------------------------------------------------------- CLI


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # A foreign cwd: the package is found by itself (installed; or PYTHONPATH, where another checkout is installed).
    return subprocess.run(
        [sys.executable, "-m", "kdsum", "ingest", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _spec(path: Path, **settings: Any) -> str:
    spec = DataSpec(
        train=settings["train"],
        dev=settings.get("dev"),
        test=settings.get("test"),
        encoding=settings.get("encoding", "auto"),
        leakage=settings.get("leakage", "report"),
        near_duplicate_threshold=settings.get("near_duplicate_threshold", NEAR_DUPLICATE_THRESHOLD),
    )
    path.write_text(to_json(spec))
    return str(path)


def test_data_errors_are_kdsum_errors() -> None:
    assert issubclass(DataError, KdsumError) and issubclass(DataError, ValueError)


def test_cli_success_and_refusal(tmp_path: Path) -> None:
    spec = _spec(tmp_path / "ok.json", train=fx("plain_utf8.csv"), dev=fx("dev_multi_ref.csv"))
    ok = _cli(["--spec", spec, "--out-dir", "res/data"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "res" / "data").iterdir()) == ["dev.jsonl", "stats.json", "train.jsonl"]
    assert "train=3, dev=2" in ok.stderr

    spec = _spec(tmp_path / "bad.json", train=fx("plain_utf8.csv"), dev=fx("leak_dev.csv"))
    bad = _cli(["--spec", spec, "--out-dir", "bad"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: leakage:")
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "bad").exists()

    # --leakage drop_train: written without the train copy, with a warning naming the splits and the pair
    leak = _cli(["--spec", spec, "--out-dir", "leak", "--leakage", "drop_train"], tmp_path)
    assert leak.returncode == 0, leak.stderr
    assert "warning: 1 dialogue(s) shared by train and dev" in leak.stderr and "train_c ~ dev_7 (1.00)" in leak.stderr
    assert "drop_train removed 1 train row(s)" in leak.stderr

    # a spec file of the wrong kind, or none: one line, exit 2
    (tmp_path / "wrong.json").write_text('{"kind": "EvaluationArgs", "aggregate": "mean", "bootstrap": 0, "seed": 0}')
    for name in ("wrong.json", "missing.json"):
        p = _cli(["--spec", str(tmp_path / name), "--out-dir", "x"], tmp_path)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and name in p.stderr
        assert "Traceback" not in p.stderr and not (tmp_path / "x").exists()


def test_cli_raw_paths_never_meet_a_shell(tmp_path: Path) -> None:
    # The raw paths travel in the spec file: spaces and $(...) in a path are just characters.
    odd = tmp_path / "raw data $(touch pwned); x"
    odd.mkdir()
    (odd / "train file.csv").write_bytes((FIX / "plain_utf8.csv").read_bytes())
    spec = _spec(tmp_path / "spec.json", train=str(odd / "train file.csv"))
    p = _cli(["--spec", spec, "--out-dir", "out"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "pwned").exists()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert stats["source_files"] == {"train": str(odd / "train file.csv")}


# --------------------------------------------------------------------------- real data


def _shared(*parts: str) -> str:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing")
    return str(path)


@pytest.mark.integration
def test_real_korean_competition_data(tmp_path: Path) -> None:
    paths = {
        "train": _shared("ko", "train_subset_2500.csv"),
        "dev": _shared("ko", "dev.csv"),
        "test": _shared("ko", "test.csv"),
    }
    # Translations of DialogSum's duplicated dialogues are near-duplicates across the splits: refused on request,
    # reported and flagged by default.
    with pytest.raises(DataError, match=r"leakage: .*dev\.csv.*train_subset_2500\.csv.*37 such pair"):
        ingest_splits(paths, tmp_path / "refused", leakage="refuse")
    assert_nothing_written(tmp_path / "refused")
    stats = ingest_splits(paths, tmp_path / "ko")
    dev = load_split(tmp_path / "ko" / "dev.jsonl")
    flagged = {p["fnames"][1] for item in stats["leakage"][:1] for p in item["pairs"]}
    assert {r["fname"] for r in dev if r["near_dup_train"]} == flagged
    assert stats["near_dup_train"] == {"dev": len(flagged), "test": 4} and stats["dropped_train"] == []
    rows = {name: s["rows"] for name, s in stats["splits"].items()}
    assert rows == {"train": 2500, "dev": 499, "test": 499}
    assert [len(load_split(tmp_path / "ko" / f"{n}.jsonl")) for n in ("train", "dev", "test")] == [2500, 499, 499]
    assert stats["splits"]["test"]["references_per_dialogue"] == {"max": 0}
    assert {"#Person4#", "#DateOfBirth#", "#PhoneNumber#", "#PassportNumber#"} <= set(stats["special_tokens"])
    assert [(item["splits"], len(item["pairs"])) for item in stats["leakage"]] == [
        (["train", "dev"], 37),
        (["train", "test"], 4),
        (["dev", "test"], 9),
    ]
    assert not any(p["identical"] for item in stats["leakage"] for p in item["pairs"])
    assert all(item["shared_fnames"] == [] for item in stats["leakage"])
    # Rows that normalisation changes in the real data: two turns (or more) on one line, in 2 train and 2 test rows
    # (train_2522, train_2894; test_134, test_346), now split; no NFD, invisible or control characters, no variants.
    changed = {name: s["normalisation"] for name, s in stats["splits"].items()}
    assert {name: n["rows_changed"] for name, n in changed.items()} == {"train": 2, "dev": 0, "test": 2}
    assert changed["train"]["turns_split"] == {"rows": 2, "count": 12}
    assert changed["test"]["turns_split"] == {"rows": 2, "count": 15}
    assert all(n[k]["rows"] == 0 for n in changed.values() for k in ("nfc", "format_chars", "control_chars"))
    train = {r["fname"]: r for r in load_split(tmp_path / "ko" / "train.jsonl")}
    assert len(train["train_2522"]["turns"]) > 1 and "#Person2#:" not in train["train_2522"]["turns"][0]["text"]


@pytest.mark.integration
def test_real_dialogsum_data(tmp_path: Path) -> None:
    paths = {name: _shared("dialogsum", f"{name}.jsonl") for name in ("train", "dev", "test")}
    # The public release really does repeat dialogues across splits (modulo trailing spaces), and has many more
    # near-duplicates: identical dialogues are refused, naming both files and the first identical pair (32 of them).
    with pytest.raises(DataError, match=r"leakage: dialogue of 'dev_\d+' in dev \(.*dev\.jsonl\) is identical after "
                       r"normalisation to 'train_\d+' in train \(.*train\.jsonl\); 32 such pair") as err:  # fmt: skip
        ingest_splits(paths, tmp_path / "refused")
    assert "set drop_train" in str(err.value)
    assert_nothing_written(tmp_path / "refused")
    # drop_train removes the train copies, but dev and test share 6 identical dialogues: refused under every policy
    with pytest.raises(
        DataError, match=r"in test .* is identical after normalisation to 'dev_\d+'.*every data.leakage"
    ):
        ingest_splits(paths, tmp_path / "refused", leakage="drop_train")

    stats = ingest_splits({k: paths[k] for k in ("train", "dev")}, tmp_path / "dev", leakage="drop_train")
    assert len(stats["dropped_train"]) == len({p["fnames"][0] for p in stats["leakage"][0]["pairs"]})
    assert stats["splits"]["train"]["rows"] == 12460 - len(stats["dropped_train"])
    # train and test share near-duplicates only: reported, and the test rows flagged
    stats = ingest_splits({k: paths[k] for k in ("train", "test")}, tmp_path / "ds")
    assert {name: s["rows"] for name, s in stats["splits"].items()} == {"train": 12460, "test": 500}
    test = load_split(tmp_path / "ds" / "test.jsonl")
    assert len(test) == 500 and all(len(r["summaries"]) == 3 for r in test)
    assert [(item["splits"], len(item["pairs"]), sum(p["identical"] for p in item["pairs"])) for item in
            stats["leakage"]] == [(["train", "test"], 36, 0)]  # fmt: skip
    assert stats["near_dup_train"]["test"] == len({p["fnames"][1] for p in stats["leakage"][0]["pairs"]})
    # Rows normalisation changes: train_4374's "#PErson2#:" (a turn of its own now) and train_6226's two turns on
    # one line; nothing else.
    changed = {name: s["normalisation"] for name, s in stats["splits"].items()}
    assert {name: n["rows_changed"] for name, n in changed.items()} == {"train": 2, "test": 0}
    assert changed["train"]["speaker_tags"] == {"rows": 1, "count": 1}
    assert changed["train"]["turns_split"] == {"rows": 1, "count": 1}
    train = {r["fname"]: r for r in load_split(tmp_path / "ds" / "train.jsonl")}
    assert train["train_4374"]["turns"][1] == {"speaker": "#Person2#", "text": "what's wrong?"}


# The Korean translations (2025 edition) of the 15 dialogue pairs that DialogSum repeats verbatim across splits.
KNOWN_KO_PAIRS = [
    ("train_714", "dev_305"), ("train_1483", "dev_163"), ("train_2260", "dev_90"), ("train_2843", "dev_142"),
    ("train_3326", "dev_88"), ("train_3688", "dev_101"), ("train_4580", "dev_385"), ("train_7472", "dev_108"),
    ("train_10913", "dev_472"), ("dev_40", "test_63"), ("dev_87", "test_59"), ("dev_288", "test_462"),
    ("dev_433", "test_112"), ("dev_434", "test_410"), ("dev_479", "test_480"),
]  # fmt: skip


@pytest.mark.integration
def test_real_data_near_duplicates(tmp_path: Path) -> None:
    """The calibration of data.near_duplicate_threshold, and the speed of the detection at full scale."""
    from kdsum.data.ingest import _read_validated
    from kdsum.data.leakage import find_leakage, similarity

    ko = {"train": _shared("ko", "train_subset_2500.csv"), "dev": _shared("ko", "dev.csv"),
          "test": _shared("ko", "test.csv")}  # fmt: skip
    ds = {name: _shared("dialogsum", f"{name}.jsonl") for name in ("train", "dev", "test")}
    # 12,460 x 500 x 500 dialogues (DialogSum): all pairs compared, in seconds on one core (about 2 s measured)
    ds_splits = [_read_validated(name, path) for name, path in ds.items()]
    start = time.perf_counter()
    ds_pairs = find_leakage(ds_splits, NEAR_DUPLICATE_THRESHOLD)
    assert time.perf_counter() - start < 20
    assert sum(len(item["pairs"]) for item in ds_pairs) == 238
    english = {r["fname"]: r for s in ds_splits for r in s.records}
    # Korean: at 0.2 every known pair is found (0.211-0.526); at the default 0.25, 12 of the 15.
    stats = ingest_splits(ko, tmp_path / "ko", near_duplicate_threshold=0.2)
    found = {tuple(p["fnames"]): p["similarity"] for item in stats["leakage"] for p in item["pairs"]}
    known = sorted(found[pair] for pair in KNOWN_KO_PAIRS)
    assert known[0] == pytest.approx(0.2111, abs=1e-4) and known[-1] == pytest.approx(0.5262, abs=1e-4)
    assert sum(s >= NEAR_DUPLICATE_THRESHOLD for s in known) == 12
    # Every pair at the default is a translation of related English dialogues (English similarity >= 0.13: the same
    # dialogue, or a paraphrase of it); the one translation of unrelated ones at >= 0.2, two short stock-phrase
    # reservations, scores 0.21.
    default = {pair: sim for pair, sim in found.items() if sim >= NEAR_DUPLICATE_THRESHOLD}
    assert len(default) == 50
    assert min(similarity(english[a], english[b]) for a, b in default) > 0.13
    unrelated = [(pair, sim) for pair, sim in found.items() if similarity(english[pair[0]], english[pair[1]]) < 0.1]
    assert [(pair, round(sim, 2)) for pair, sim in unrelated] == [(("train_2362", "test_357"), 0.21)]


# --------------------------------------------------------------------------- hostile input (issue 11)
#
# Each test writes a real hostile file into tmp_path and ingests it: a refusal is one line naming the file and the
# key or row; a normalisation is visible in the records and counted in stats.json.

HEADER = "fname,dialogue,summary,topic\n"
CLEAN_ROWS = {
    "train_1": ("#Person1#: 안녕하세요, 무엇을 도와드릴까요?\n#Person2#: 제 전화번호를 바꾸고 싶어요.", "번호 변경"),
    "train_2": ("#Person1#: 내일 몇 시에 만날까?\n#Person2#: 세 시 어때? 역 앞에서 보자.", "약속"),
}


def _csv(path: Path, rows: dict[str, tuple[str, str]], *, encoding: str = "utf-8", header: str = HEADER) -> str:
    """A competition-style CSV of ``{fname: (dialogue, summary)}``, dialogue and summary quoted."""
    body = "".join(f'{f},"{d}","{s}",topic\n' for f, (d, s) in rows.items())
    path.write_bytes((header + body).encode(encoding))
    return str(path)


def _normalisation(stats: dict[str, Any], split: str = "train") -> dict[str, Any]:
    return stats["splits"][split]["normalisation"]


def test_format_chars_cover_every_unicode_format_character() -> None:
    from kdsum.korean.text import FORMAT_CHARS, normalize_text

    cf = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf"]
    assert normalize_text("a" + "".join(cf) + "b") == "ab", f"{len(cf)} Cf characters in unicodedata"
    assert "\u200b" in cf and FORMAT_CHARS


def test_nfd_hangul_is_composed_and_counted(tmp_path: Path) -> None:
    nfd = unicodedata.normalize("NFD", CLEAN_ROWS["train_1"][0])
    assert nfd != CLEAN_ROWS["train_1"][0] and "\u1100" <= nfd[12] <= "\u11ff"  # conjoining jamo
    train = _csv(tmp_path / "train.csv", {"train_1": (nfd, unicodedata.normalize("NFD", "번호 변경")),
                                          "train_2": CLEAN_ROWS["train_2"]})  # fmt: skip
    stats = ingest_splits({"train": train}, tmp_path / "out")
    records = load_split(tmp_path / "out" / "train.jsonl")
    assert records[0]["dialogue"] == CLEAN_ROWS["train_1"][0] and records[0]["summaries"] == ["번호 변경"]
    assert _normalisation(stats)["nfc"] == {"rows": 1, "count": 2}  # the dialogue and the summary of one row
    assert _normalisation(stats)["rows_changed"] == 1


def test_nfd_copy_of_a_training_dialogue_is_leakage(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", CLEAN_ROWS)
    dev = _csv(tmp_path / "dev.csv", {"dev_1": (unicodedata.normalize("NFD", CLEAN_ROWS["train_2"][0]), "요약")})
    with pytest.raises(DataError) as err:
        ingest_splits({"train": train, "dev": dev}, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "dev.csv" in msg and "train.csv" in msg
    assert "'dev_1'" in msg and "identical after normalisation to 'train_2'" in msg
    assert_nothing_written(tmp_path / "out")


def test_zero_width_and_control_characters_are_removed_and_counted(tmp_path: Path) -> None:
    # U+200B before a tag merged its turn into the previous one; U+FEFF, U+200C, U+200D, U+2060 inside words; a NUL
    # and a BEL; and a zero-width space in the fname.
    dialogue = (
        "#Person1#: 안녕\u200c하세요\x00, 무엇을 도와\u2060드릴까요?\u200b#Person2#: 제 전화\ufeff번호를 바꾸고 싶어요.\x07\n"
        "\u200b#Person1#: 네, 확인\u200d했습니다."
    )
    train = _csv(
        tmp_path / "train.csv", {"train_1\u200b": (dialogue, "번호\x00 변경"), "train_2": CLEAN_ROWS["train_2"]}
    )
    stats = ingest_splits({"train": train}, tmp_path / "out")
    first = load_split(tmp_path / "out" / "train.jsonl")[0]
    assert first["fname"] == "train_1"
    assert first["turns"] == [
        {"speaker": "#Person1#", "text": "안녕하세요, 무엇을 도와드릴까요?"},
        {"speaker": "#Person2#", "text": "제 전화번호를 바꾸고 싶어요."},
        {"speaker": "#Person1#", "text": "네, 확인했습니다."},
    ]
    assert first["summaries"] == ["번호 변경"]
    norm = _normalisation(stats)
    assert norm["format_chars"] == {"rows": 1, "count": 7}  # 200C 2060 200B FEFF 200B 200D + the fname's 200B
    assert norm["control_chars"] == {"rows": 1, "count": 3}  # NUL, BEL, NUL
    assert norm["turns_split"] == {"rows": 1, "count": 1} and norm["rows_changed"] == 1
    assert "\x00" not in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")


def test_speaker_tag_variants_and_two_turns_on_one_line(tmp_path: Path) -> None:
    dialogue = (
        "#Person1#: 내일 몇 시에 만날까? # Person2 #: 세 시 어때?\n"
        "#person1#: 좋아. #PERSON2#:역 앞에서 보자.\n"
        "#Person1# : 이건 태그가 아니다"  # a blank before the colon: text of the turn
    )
    train = _csv(tmp_path / "train.csv", {"train_1": (dialogue, "약속"), "train_2": CLEAN_ROWS["train_1"]})
    stats = ingest_splits({"train": train}, tmp_path / "out")
    assert load_split(tmp_path / "out" / "train.jsonl")[0]["dialogue"] == (
        "#Person1#: 내일 몇 시에 만날까?\n#Person2#: 세 시 어때?\n#Person1#: 좋아.\n"
        "#Person2#: 역 앞에서 보자. #Person1# : 이건 태그가 아니다"
    )
    norm = _normalisation(stats)
    assert norm["speaker_tags"] == {"rows": 1, "count": 3}  # "# Person2 #:", "#person1#:", "#PERSON2#:"
    assert norm["turns_split"] == {"rows": 1, "count": 2}
    assert norm["rows_changed"] == 1
    assert parse_turns("#Person01#: a")[0]["speaker"] == "#Person1#"


# --------------------------------------------------------------------------- encodings


def test_windows_1252_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    rows = {"train_1": ("#Person1#: Äpfel—or Birnen?\n#Person2#: Äpfel, bitte.", "Obst")}
    path = _csv(tmp_path / "german.csv", rows, encoding="cp1252")
    assert (tmp_path / "german.csv").read_bytes().decode("cp949").count("훡fel") == 2  # what CP949 used to invent
    with pytest.raises(DataError) as err:
        ingest_splits({"train": path}, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "german.csv" in msg and "data.encoding: cp1252" in msg and "line 2" in msg
    assert "훡fel뾬r Birnen?" in msg and "as Windows-1252 it reads" in msg and "Äpfel—or Birnen?" in msg
    assert_nothing_written(tmp_path / "out")
    # an explicit codec is used as given
    stats = ingest_splits({"train": path}, tmp_path / "out", encoding="cp1252")
    assert stats["splits"]["train"]["encoding"] == "cp1252"
    assert load_split(tmp_path / "out" / "train.jsonl")[0]["turns"][0]["text"] == "Äpfel—or Birnen?"
    # Windows-1252 that is not even CP949 (an accented letter before a blank): refused, naming the setting too
    rows = {"train_1": ("#Person1#: Grüße aus Köln!\n#Person2#: Danke schön.", "Gruß")}
    with pytest.raises(DataError, match=r"koeln\.csv: cannot decode file as UTF-8 or CP949 .*data\.encoding: cp1252"):
        ingest_splits({"train": _csv(tmp_path / "koeln.csv", rows, encoding="cp1252")}, tmp_path / "o2")


def test_mojibake_is_refused(tmp_path: Path) -> None:
    # UTF-8 text once read as Windows-1252 and saved again as UTF-8: '안녕하세요' becomes 'ì•ˆë…•í•˜ì„¸ìš”'.
    text = HEADER + "".join(f'{f},"{d}","{s}",topic\n' for f, (d, s) in CLEAN_ROWS.items())
    broken = text.encode("utf-8").decode("cp1252", errors="replace")
    path = tmp_path / "mojibake.csv"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(DataError) as err:
        ingest_splits({"train": str(path)}, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "mojibake.csv" in msg and "line 2" in msg
    assert "decoded as Windows-1252" in msg and "'ì•ˆ'" in msg and "'안'" in msg and "data.encoding: utf-8" in msg
    assert_nothing_written(tmp_path / "out")
    # the same in JSON lines spelled with \u escapes
    jsonl = tmp_path / "mojibake.jsonl"
    jsonl.write_text(json.dumps({"fname": "x", "dialogue": broken, "summary": "s"}) + "\n", encoding="ascii")
    with pytest.raises(DataError, match=r"mojibake\.jsonl: line 1: looks like UTF-8 text that was decoded"):
        read_split(jsonl, "train")
    # read as it is, when asked
    assert read_split(path, "train", encoding="utf-8")[0]["fname"] == "train_1"


def test_genuine_files_still_decode_automatically(tmp_path: Path) -> None:
    # UTF-8 with a stray 'É…' (not mojibake), CP949 Korean, UTF-8 with BOM: all as before
    rows = dict(CLEAN_ROWS, train_3=("#Person1#: CAFÉ… s'il vous plaît.\n#Person2#: Oui.", "café"))
    assert read_split(_csv(tmp_path / "fr.csv", rows), "train")[2]["turns"][0]["text"] == "CAFÉ… s'il vous plaît."
    assert len(read_split(_csv(tmp_path / "ko.csv", CLEAN_ROWS, encoding="cp949"), "train")) == 2
    assert len(read_split(_csv(tmp_path / "bom.csv", CLEAN_ROWS, encoding="utf-8-sig"), "train")) == 2
    # an explicit utf-8 tolerates the BOM too (it is not part of the first column's name)
    assert len(read_split(str(tmp_path / "bom.csv"), "train", encoding="utf-8")) == 2


def test_encoding_setting_errors_name_the_key(tmp_path: Path) -> None:
    path = _csv(tmp_path / "train.csv", CLEAN_ROWS)
    with pytest.raises(DataError, match=r"^data\.encoding: unknown codec 'klingon'.*train\.csv"):
        ingest_splits({"train": path}, tmp_path / "out", encoding="klingon")
    with pytest.raises(DataError, match=r"train\.csv: cannot decode file as ascii \(data\.encoding\).*line 2"):
        ingest_splits({"train": path}, tmp_path / "out", encoding="ascii")
    utf16 = _csv(tmp_path / "utf16.csv", CLEAN_ROWS, encoding="utf-16")
    with pytest.raises(
        DataError, match=r"utf16\.csv: starts with a UTF-16 byte-order mark; set data\.encoding: utf-16"
    ):
        ingest_splits({"train": utf16}, tmp_path / "out")
    assert len(read_split(utf16, "train", encoding="utf-16")) == 2
    with pytest.raises(DataError, match=r"undecodable\.csv: cannot decode .*set data\.encoding"):
        ingest_splits({"train": fx("undecodable.csv")}, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------- leakage


def _edited(dialogue: str) -> str:
    """A copy with a few words changed: what a near-duplicate looks like."""
    return dialogue.replace("무엇을", "뭘").replace("바꾸고", "변경하고")


LONG = {
    "train_1": (
        "#Person1#: 안녕하세요, 무엇을 도와드릴까요?\n#Person2#: 제 휴대폰 요금제를 바꾸고 싶어요. 데이터를 너무 많이 써서요.\n"
        "#Person1#: 지금은 월 삼만 원짜리 요금제를 쓰고 계시네요. 무제한 요금제는 오만 오천 원입니다.\n"
        "#Person2#: 조금 비싸네요. 중간 요금제는 없나요?\n#Person1#: 사만 이천 원에 데이터 이십 기가 요금제가 있어요.",
        "요금제 변경",
    ),
    "train_2": (
        "#Person1#: 주말에 뭐 할 거야?\n#Person2#: 친구들이랑 한강에서 자전거 타기로 했어. 너도 올래?\n"
        "#Person1#: 좋지! 몇 시에 만나?\n#Person2#: 토요일 오후 두 시에 여의나루역 이번 출구에서 보자.",
        "주말 약속",
    ),
}


def test_near_duplicate_across_splits_is_refused_and_allowed(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", LONG)
    dev = _csv(tmp_path / "dev.csv", {"dev_9": (_edited(LONG["train_1"][0]), "요금제"), "dev_2": CLEAN_ROWS["train_2"]})
    with pytest.raises(DataError) as err:
        ingest_splits({"train": train, "dev": dev}, tmp_path / "out", leakage="refuse")
    msg = str(err.value)
    assert "\n" not in msg and "dev.csv" in msg and "train.csv" in msg
    assert "'dev_9' in dev" in msg and "is a near-duplicate (similarity 0.8" in msg and "of 'train_1' in train" in msg
    assert "1 such pair(s) between train and dev" in msg and "data.near_duplicate_threshold 0.25" in msg
    assert "data.leakage: report" in msg
    assert_nothing_written(tmp_path / "out")

    stats = ingest_splits({"train": train, "dev": dev}, tmp_path / "out")  # report, the default
    assert [r["near_dup_train"] for r in load_split(tmp_path / "out" / "dev.jsonl")] == [True, False]
    assert stats["near_dup_train"] == {"dev": 1} and stats["splits"]["train"]["rows"] == 2
    dropped = ingest_splits({"train": train, "dev": dev}, tmp_path / "o4", leakage="drop_train")
    assert dropped["dropped_train"] == ["train_1"] and dropped["near_dup_train"] == {"dev": 0}
    assert [r["fname"] for r in load_split(tmp_path / "o4" / "train.jsonl")] == ["train_2"]
    (item,) = stats["leakage"]
    assert item["splits"] == ["train", "dev"] and item["shared_fnames"] == []
    (pair,) = item["pairs"]
    assert pair["fnames"] == ["train_1", "dev_9"] and not pair["identical"] and 0.8 < pair["similarity"] < 1
    # the threshold is honoured: above the pair's similarity, nothing is shared
    assert ingest_splits({"train": train, "dev": dev}, tmp_path / "o2", near_duplicate_threshold=0.95)["leakage"] == []
    with pytest.raises(DataError, match="data.near_duplicate_threshold: must be in"):
        ingest_splits({"train": train}, tmp_path / "o3", near_duplicate_threshold=0)


def test_fname_in_two_splits_is_refused(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", LONG)
    dev = _csv(tmp_path / "dev.csv", {"train_2": CLEAN_ROWS["train_2"]})  # an fname of train, another dialogue
    with pytest.raises(DataError) as err:
        ingest_splits({"train": train, "dev": dev}, tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith("leakage: fname 'train_2' is in both train (") and "train.csv" in msg and "dev.csv" in msg
    assert "1 shared fname(s) between train and dev" in msg and "whatever data.leakage says" in msg
    for policy in ("refuse", "drop_train"):
        with pytest.raises(DataError, match="fname 'train_2' is in both train"):
            ingest_splits({"train": train, "dev": dev}, tmp_path / "out", leakage=policy)
    assert_nothing_written(tmp_path / "out")


def test_similarity_is_exact_jaccard_of_jamo_5_grams() -> None:
    from kdsum.data.leakage import _similar_texts, similarity_text

    records = [read_split(fx("plain_utf8.csv"), "train")[0], read_split(fx("dev_multi_ref.csv"), "dev")[0]]
    texts = [similarity_text(r) for r in records] + [unicodedata.normalize("NFD", "무엇을도와드릴까요제휴대폰")]
    assert texts[0].startswith(unicodedata.normalize("NFD", "안녕하세요무엇을"))  # no tags, no punctuation
    grams = [{t[i : i + 5] for i in range(len(t) - 4)} for t in texts]
    masks = __import__("numpy").array([1, 2, 2])
    for x, y, sim in _similar_texts(texts, masks, 0.01):
        assert sim == len(grams[x] & grams[y]) / len(grams[x] | grams[y])


def test_leakage_settings_from_the_spec_and_the_cli_override(tmp_path: Path) -> None:
    train = _csv(tmp_path / "train.csv", LONG)
    dev = _csv(tmp_path / "dev.csv", {"dev_9": (_edited(LONG["train_1"][0]), "요금제")})
    refused = _cli(["--spec", _spec(tmp_path / "s1.json", train=train, dev=dev, leakage="refuse"), "--out-dir", "o1"],
                   tmp_path)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.startswith("error: leakage: dialogue of 'dev_9'")
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "o1").exists()
    allowed = _cli(["--spec", _spec(tmp_path / "s2.json", train=train, dev=dev),
                    "--out-dir", "o2"], tmp_path)  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: 1 dialogue(s) shared by train and dev (0 identical, 1 near-duplicate(s)" in allowed.stderr
    assert "train_1 ~ dev_9 (0.8" in allowed.stderr and "(flagged near_dup_train): dev 1" in allowed.stderr
    stats = json.loads((tmp_path / "o2" / "stats.json").read_text(encoding="utf-8"))
    assert stats["leakage"][0]["pairs"][0]["fnames"] == ["train_1", "dev_9"]
    strict = _cli(["--spec", _spec(tmp_path / "s3.json", train=train, dev=dev, near_duplicate_threshold=0.99,
                                   leakage="refuse"),
                   "--out-dir", "o3"], tmp_path)  # fmt: skip
    assert strict.returncode == 0, strict.stderr
    override = _cli(["--spec", str(tmp_path / "s1.json"), "--out-dir", "o4",
                     "--leakage", "report"], tmp_path)  # fmt: skip
    assert override.returncode == 0, override.stderr
    german = _csv(
        tmp_path / "german.csv", {"train_1": ("#Person1#: Äpfel—or?\n#Person2#: Ja.", "Obst")}, encoding="cp1252"
    )
    bad = _cli(["--spec", _spec(tmp_path / "s5.json", train=german), "--out-dir", "o5"], tmp_path)
    assert bad.returncode == 2 and "german.csv" in bad.stderr and "data.encoding: cp1252" in bad.stderr
    good = _cli(["--spec", _spec(tmp_path / "s6.json", train=german, encoding="cp1252"), "--out-dir", "o6"], tmp_path)
    assert good.returncode == 0, good.stderr


def test_schema_default_threshold_is_the_library_default() -> None:
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    data = schema["properties"]["data"]["properties"]
    assert data["near_duplicate_threshold"]["default"] == NEAR_DUPLICATE_THRESHOLD
    assert data["encoding"]["default"] == "auto" and data["leakage"]["default"] == LEAKAGE_POLICIES[0] == "report"
    assert data["leakage"]["enum"] == list(LEAKAGE_POLICIES)


def test_an_old_allow_leakage_key_is_refused_naming_data_leakage(tmp_path: Path) -> None:
    from kdsum.config.files import ConfigError
    from kdsum.config.resolve import load_config

    overlay = tmp_path / "old.yaml"
    overlay.write_text("data: {allow_leakage: true}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config([ROOT / "config.yaml", overlay])
    msg = str(err.value)
    assert "\n" not in msg and "key 'data'" in msg and "'allow_leakage' is replaced by 'leakage: report" in msg
    assert load_config(ROOT / "config.yaml")["data"]["leakage"] == "report"


def test_sample_data_ingests_with_the_defaults(tmp_path: Path) -> None:
    # The repository's sample is written as paraphrases of a few scenarios: the closest cross-split pairs score
    # 0.22-0.23, below the default threshold (and would be reported at 0.2).
    paths = {s: str(ROOT / "data" / "sample" / f"{s}.csv") for s in ("train", "dev", "test")}
    assert ingest_splits(paths, tmp_path / "out")["leakage"] == []
    lower = ingest_splits(paths, tmp_path / "o2", near_duplicate_threshold=0.2)["leakage"]
    sims = sorted(p["similarity"] for item in lower for p in item["pairs"])
    assert len(sims) == 3 and 0.2 < sims[0] and sims[-1] < NEAR_DUPLICATE_THRESHOLD


# --------------------------------------------------------------------------- crash leftovers


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_killed_ingest_leaves_the_old_output_whole_and_its_leftovers_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest_splits({"train": fx("plain_utf8.csv"), "dev": fx("dev_multi_ref.csv")}, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / ".gitignore").write_text("/train.jsonl\n")  # DVC keeps one beside its outputs
    # An ingest killed (no clean-up at all: os._exit) after writing the split files, before stats.json
    script = (
        "import os, sys; import kdsum.data.ingest as d\n"
        "d.write_json = lambda path, obj: os._exit(137)\n"
        f"d.ingest_splits({{'train': {fx('stats_tiny.csv')!r}, 'test': {fx('test_no_summary.csv')!r}}}, {str(out)!r})\n"
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    # the old output is whole: nothing new mixed in
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".gitignore"} == before
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".kdsum-tmp")]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".out.") and leftovers[0].is_dir()
    assert (leftovers[0] / "train.jsonl").exists()  # the killed run's work, hidden beside the output
    # earlier leftovers of other kinds: a file of a dead writer, one of this version's naming, and an old-style one
    (
        out / f".stats.json.{__import__('socket').gethostname().split('.')[0]}.{_dead_pid()}.0123abcd.kdsum-tmp"
    ).write_text("x")
    legacy = tmp_path / ".out.k2j4_x9z.tmp"
    legacy.mkdir()
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    live = tmp_path / f".out.{__import__('socket').gethostname().split('.')[0]}.{os.getpid()}.89abcdef.kdsum-tmp"
    live.mkdir()  # a running writer's (ours): kept
    ingest_splits({"train": fx("stats_tiny.csv"), "test": fx("test_no_summary.csv")}, out)
    assert sorted(p.name for p in out.iterdir()) == [".gitignore", "stats.json", "test.jsonl", "train.jsonl"]
    assert (out / ".gitignore").read_text() == "/train.jsonl\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name])
    live.rmdir()


def test_killed_file_writer_leftover_is_removed_by_the_next_write(tmp_path: Path) -> None:
    from kdsum.io import write_json

    target = tmp_path / "S.json"
    script = (
        "import os; from kdsum.io import atomic_path\n"
        f"with atomic_path({str(target)!r}) as tmp:\n    tmp.write_text('half'); os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".S.json.") and leftover.name.endswith(".kdsum-tmp") and not target.exists()
    write_json(target, {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S.json"]
