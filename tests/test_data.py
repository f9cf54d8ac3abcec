"""Tests for kdsum.data (ingestion) and the ``kdsum ingest`` stage, on real files on disk.

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
from pathlib import Path

import pytest

from kdsum.data import (
    DataError,
    collect_special_tokens,
    ingest_splits,
    load_split,
    normalize_dialogue,
    parse_turns,
    read_split,
    split_stats,
)
from kdsum.errors import KdsumError
from kdsum.spec import DataSpec, to_json

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
    assert list(test[0]) == ["fname", "dialogue", "turns", "summaries", "topic"]


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
    # it is a data token of the one pattern (kdsum.text), which scoring keeps whole: so it is a mask here too.
    assert collect_special_tokens(records) == [
        "#Person1#", "#Person2#", "#Person3#", "#Person10#", "#Alpha#", "#PErson2#", "#Zeta#",
    ]  # fmt: skip


def test_special_tokens_are_the_data_tokens_scoring_keeps_whole() -> None:
    # One pattern (kdsum.text.DATA_TOKEN_PATTERN) for the tokenizer's special tokens and for scoring: a mask with
    # digits such as #Address2# reaches the tokenizer, and "#Person1# :" / "#a b#" / "#1#" are not tokens.
    from kdsum.metrics import MASK_PATTERN
    from kdsum.text import DATA_TOKEN_PATTERN

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
    }
    assert stats["special_tokens"] == ["#Person1#", "#Person2#", "#Person3#", "#PhoneNumber#"]
    assert stats["source_files"] == {"train": fx("stats_tiny.csv")}
    assert stats["source_sha256"] == {"train": hashlib.sha256((FIX / "stats_tiny.csv").read_bytes()).hexdigest()}
    assert stats["leakage"] == []
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


def test_allow_leakage_records_pairs(tmp_path: Path) -> None:
    stats = ingest_splits(
        {"train": fx("plain_utf8.csv"), "dev": fx("leak_dev.csv")}, tmp_path / "out", allow_leakage=True
    )
    assert stats["leakage"] == [
        {
            "splits": ["train", "dev"],
            "files": [fx("plain_utf8.csv"), fx("leak_dev.csv")],
            "pairs": [["train_c", "dev_7"]],
        }
    ]


def test_load_split_rejects_raw_files() -> None:
    with pytest.raises(DataError, match="not a normalised record"):
        load_split(FIX / "dialogsum_multi.jsonl")


# --------------------------------------------------------------------------- CLI


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH and a foreign cwd: the installed package must be found by itself.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "kdsum", "ingest", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _spec(path: Path, **splits: str) -> str:
    path.write_text(to_json(DataSpec(train=splits["train"], dev=splits.get("dev"), test=splits.get("test"))))
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

    # --allow-leakage: written, with a warning naming the splits
    leak = _cli(["--spec", spec, "--out-dir", "leak", "--allow-leakage"], tmp_path)
    assert leak.returncode == 0, leak.stderr
    assert "warning: 1 dialogue(s) shared by train and dev" in leak.stderr

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
    stats = ingest_splits(paths, tmp_path / "ko")
    rows = {name: s["rows"] for name, s in stats["splits"].items()}
    assert rows == {"train": 2500, "dev": 499, "test": 499}
    assert [len(load_split(tmp_path / "ko" / f"{n}.jsonl")) for n in ("train", "dev", "test")] == [2500, 499, 499]
    assert stats["splits"]["test"]["references_per_dialogue"] == {"max": 0}
    assert {"#Person4#", "#DateOfBirth#", "#PhoneNumber#", "#PassportNumber#"} <= set(stats["special_tokens"])
    assert stats["leakage"] == []


@pytest.mark.integration
def test_real_dialogsum_data(tmp_path: Path) -> None:
    paths = {name: _shared("dialogsum", f"{name}.jsonl") for name in ("train", "dev", "test")}
    # The public release really does repeat dialogues across splits (modulo trailing
    # spaces): the default must refuse, naming both files.
    with pytest.raises(DataError, match=r"leakage: .*dev\.jsonl.*train\.jsonl.*32 such pair"):
        ingest_splits(paths, tmp_path / "refused")
    assert_nothing_written(tmp_path / "refused")

    stats = ingest_splits(paths, tmp_path / "ds", allow_leakage=True)
    assert {name: s["rows"] for name, s in stats["splits"].items()} == {"train": 12460, "dev": 500, "test": 500}
    test = load_split(tmp_path / "ds" / "test.jsonl")
    assert len(test) == 500 and all(len(r["summaries"]) == 3 for r in test)
    assert [(item["splits"], len(item["pairs"])) for item in stats["leakage"]] == [
        (["train", "dev"], 32),
        (["dev", "test"], 6),
    ]
