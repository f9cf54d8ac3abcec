"""Prompt formats: exact expected text for a small dialogue, the topic policy, and the special tokens."""

import dataclasses
import json
import subprocess
import sys

import pytest

from kdsum.config.catalog import spec_for
from kdsum.config.files import ConfigError
from kdsum.config.resolve import load_config
from kdsum.config.spec import PromptFormat, to_json
from kdsum.data.ingest import normalize_dialogue
from kdsum.data.leakage import NEAR_DUPLICATE_THRESHOLD
from kdsum.data.prompts import PromptError, format_chat_record, format_seq2seq_record, format_split, format_user_message
from kdsum.errors import KdsumError

RECORD = {
    "fname": "t_1",
    "dialogue": "#Person1#: 전화번호가 뭐예요?\n#Person2#: #PhoneNumber#이에요.",
    "turns": [
        {"speaker": "#Person1#", "text": "전화번호가 뭐예요?"},
        {"speaker": "#Person2#", "text": "#PhoneNumber#이에요."},
    ],
    "summaries": ["#Person2#는 #Person1#에게 전화번호를 알려줍니다."],
    "topic": "연락처",
}
PLAIN = {
    "system": "대화를 요약하세요.",
    "question": "위 대화를 요약해 주세요.",
    "topic": False,
    "enable_thinking": False,
}


def test_chat_format_exact_text():
    row = format_chat_record(RECORD, PLAIN)
    assert row == {
        "fname": "t_1",
        "prompt": [
            {"role": "system", "content": "대화를 요약하세요."},
            {
                "role": "user",
                "content": "[Conversation]\n#Person1#: 전화번호가 뭐예요?\n#Person2#: #PhoneNumber#이에요.\n\n"
                "[Question]\n위 대화를 요약해 주세요.",
            },
        ],
        "completion": [{"role": "assistant", "content": "#Person2#는 #Person1#에게 전화번호를 알려줍니다."}],
        "references": ["#Person2#는 #Person1#에게 전화번호를 알려줍니다."],
    }


def test_chat_format_with_topic_and_without_system():
    row = format_chat_record(RECORD, {"system": "", "question": "요약해 주세요.", "topic": True})
    assert row["prompt"] == [
        {
            "role": "user",
            "content": "[Conversation]\n#Person1#: 전화번호가 뭐예요?\n"
            "#Person2#: #PhoneNumber#이에요.\n\n[Question]\n요약해 주세요.\n주제: 연락처",
        }
    ]


def test_a_prompt_format_spec_and_a_mapping_give_the_same_rows():
    fmt = PromptFormat(name="plain", **PLAIN)
    assert format_chat_record(RECORD, fmt) == format_chat_record(RECORD, PLAIN)
    rows = format_split([RECORD], "causal", fmt=fmt)  # the model family of a chat prompt set; name from the format
    assert rows == format_split([RECORD], "chat", "plain", PLAIN)
    with pytest.raises(PromptError, match="with-topic"):
        format_split([dict(RECORD, topic=None)], "causal", fmt=PromptFormat("with-topic", "", "q", True, False))
    with pytest.raises(PromptError, match="unknown prompt family"):
        format_split([RECORD], "encoder")
    assert issubclass(PromptError, KdsumError)


def test_conversation_block_is_the_canonical_dialogue_text():
    # one rendering of turns (kdsum.korean.text.render_turns) for the ingested dialogue and the prompt, empty turns included
    raw = "#Person1#: 안녕하세요.\n#Person2#:\n#Person1#: 네,   반갑습니다."
    turns = [
        {"speaker": "#Person1#", "text": "안녕하세요."},
        {"speaker": "#Person2#", "text": ""},
        {"speaker": "#Person1#", "text": "네, 반갑습니다."},
    ]
    content = format_user_message({"turns": turns}, {"question": "q", "topic": False})
    assert content == f"[Conversation]\n{normalize_dialogue(raw)}\n\n[Question]\nq"
    assert "#Person2#:\n" in content and "#Person2#: \n" not in content


def test_test_split_has_no_completion():
    rec = dict(RECORD, summaries=[], topic=None)
    row = format_chat_record(rec, PLAIN)
    assert "completion" not in row and row["references"] == []


def test_seq2seq_format():
    assert format_seq2seq_record(RECORD) == {
        "fname": "t_1",
        "source": RECORD["dialogue"],
        "target": RECORD["summaries"][0],
        "references": RECORD["summaries"],
    }


def test_topic_format_refused_when_a_split_has_no_topic():
    with pytest.raises(PromptError) as err:
        format_split(
            [RECORD, dict(RECORD, fname="t_2", topic=None)],
            "chat",
            "with-topic",
            {"system": "", "question": "q", "topic": True},
            split="test",
            source="data/test.jsonl",
        )
    msg = str(err.value)
    assert "with-topic" in msg and "data/test.jsonl" in msg and "row 2" in msg and "t_2" in msg


def _kdsum(repo_root, *args):
    return subprocess.run([sys.executable, "-m", "kdsum", *args], cwd=repo_root, capture_output=True, text=True)


def _write_spec(path, spec):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(spec), encoding="utf-8")
    return str(path)


def test_cli_writes_prompts_and_special_tokens(repo_root, tmp_path):
    config = load_config(repo_root / "config.yaml")
    data, specs = tmp_path / "data", tmp_path / "specs"
    p = _kdsum(
        repo_root,
        "ingest",
        "--spec",
        _write_spec(specs / "data.json", spec_for(config, "data")),
        "--out-dir",
        str(data),
    )
    assert p.returncode == 0, p.stderr
    out = tmp_path / "chat-plain"
    spec = _write_spec(specs / "prompts" / "chat-plain.json", spec_for(config, "prompts/chat-plain"))
    p = _kdsum(repo_root, "prompts", "--spec", spec, "--data-dir", str(data), "--out-dir", str(out))
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in out.iterdir()) == [
        "dev.jsonl",
        "format.json",
        "special_tokens.json",
        "test.jsonl",
        "train.jsonl",
    ]
    # the think switch is part of the format (schema default false), read by training and prediction alike
    assert json.loads((out / "format.json").read_text(encoding="utf-8"))["enable_thinking"] is False
    tokens = json.loads((out / "special_tokens.json").read_text(encoding="utf-8"))["tokens"]
    # collected from the data, not a hand-written list: the sample has 4 speakers and a date-of-birth mask
    assert {"#Person1#", "#Person4#", "#DateOfBirth#", "#PhoneNumber#", "#PassportNumber#"} <= set(tokens)
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24 and all("completion" not in r for r in rows)
    assert rows[0]["prompt"][0] == {"role": "system", "content": config["prompt"]["formats"]["plain"]["system"]}
    # the shipped topic format is refused on the sample test split (no topics), and nothing is written
    bad = tmp_path / "chat-with-topic"
    spec = _write_spec(specs / "prompts" / "chat-with-topic.json", spec_for(config, "prompts/chat-with-topic"))
    p = _kdsum(repo_root, "prompts", "--spec", spec, "--data-dir", str(data), "--out-dir", str(bad))
    assert p.returncode == 2 and "has no topic" in p.stderr and not bad.exists()
    # an unknown format has no spec at all; a spec file of another kind is refused in one line, nothing written
    with pytest.raises(ConfigError, match="chat-fancy"):
        spec_for(config, "prompts/chat-fancy")
    p = _kdsum(repo_root, "prompts", "--spec", str(specs / "data.json"), "--data-dir", str(data), "--out-dir", str(bad))
    assert p.returncode == 2 and "expected PromptSetSpec" in p.stderr and "Traceback" not in p.stderr
    assert not bad.exists()


@pytest.mark.integration
def test_prompts_on_real_data(repo_root, tmp_path, shared_data):
    config = load_config(repo_root / "config.yaml")
    base = spec_for(config, "data")  # the config's data settings (encoding, leakage, near duplicates)
    for name, (spec, extra) in {
        "ko": (
            # the Korean splits hold translations of DialogSum's duplicated dialogues: reported, by default
            dataclasses.replace(
                base,
                train=str(shared_data / "ko/train_subset_2500.csv"),
                dev=str(shared_data / "ko/dev.csv"),
                test=str(shared_data / "ko/test.csv"),
                encoding="auto",
                leakage="report",
                near_duplicate_threshold=NEAR_DUPLICATE_THRESHOLD,
            ),
            [],
        ),
        "dialogsum": (
            dataclasses.replace(
                base,
                train=str(shared_data / "dialogsum/train.jsonl"),
                dev=None,  # DialogSum repeats dev dialogues verbatim in test: refused under every policy
                test=str(shared_data / "dialogsum/test.jsonl"),
                encoding="auto",
                leakage="refuse",
                near_duplicate_threshold=NEAR_DUPLICATE_THRESHOLD,
            ),
            ["--leakage", "drop_train"],  # the command-line override
        ),
    }.items():
        data = tmp_path / name / "data"
        p = _kdsum(
            repo_root,
            "ingest",
            "--spec",
            _write_spec(tmp_path / name / "data.json", spec),
            *extra,
            "--out-dir",
            str(data),
        )
        assert p.returncode == 0, p.stderr
        for family, prompt_set in (("seq2seq", "seq2seq"), ("chat", "chat-plain")):
            out = tmp_path / name / family
            spec_file = _write_spec(tmp_path / name / f"{prompt_set}.json", spec_for(config, f"prompts/{prompt_set}"))
            p = _kdsum(repo_root, "prompts", "--spec", spec_file, "--data-dir", str(data), "--out-dir", str(out))
            assert p.returncode == 0, p.stderr
        tokens = json.loads((tmp_path / name / "chat" / "special_tokens.json").read_text(encoding="utf-8"))["tokens"]
        assert "#Person1#" in tokens and "#Person2#" in tokens
        if name == "ko":
            assert {"#PhoneNumber#", "#DateOfBirth#", "#Address#", "#PassportNumber#"} <= set(tokens)
            dev = [
                json.loads(x) for x in (tmp_path / name / "chat" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
            ]
            assert len(dev) == 499
        else:
            test = [
                json.loads(x)
                for x in (tmp_path / name / "seq2seq" / "test.jsonl").read_text(encoding="utf-8").splitlines()
            ]
            assert len(test) == 500 and all(len(r["references"]) == 3 for r in test)
