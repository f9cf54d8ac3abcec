"""Prompt formats: exact expected text for a small dialogue, the topic policy, and the special tokens."""
import json
import subprocess
import sys

import pytest

from kdsum.prompts import PromptError, format_chat_record, format_seq2seq_record, format_split

RECORD = {
    "fname": "t_1",
    "dialogue": "#Person1#: 전화번호가 뭐예요?\n#Person2#: #PhoneNumber#이에요.",
    "turns": [{"speaker": "#Person1#", "text": "전화번호가 뭐예요?"}, {"speaker": "#Person2#", "text": "#PhoneNumber#이에요."}],
    "summaries": ["#Person2#는 #Person1#에게 전화번호를 알려줍니다."],
    "topic": "연락처",
}
PLAIN = {"system": "대화를 요약하세요.", "question": "위 대화를 요약해 주세요.", "topic": False}


def test_chat_format_exact_text():
    row = format_chat_record(RECORD, PLAIN)
    assert row == {
        "fname": "t_1",
        "prompt": [
            {"role": "system", "content": "대화를 요약하세요."},
            {"role": "user", "content": "[Conversation]\n#Person1#: 전화번호가 뭐예요?\n#Person2#: #PhoneNumber#이에요.\n\n"
                                        "[Question]\n위 대화를 요약해 주세요."},
        ],
        "completion": [{"role": "assistant", "content": "#Person2#는 #Person1#에게 전화번호를 알려줍니다."}],
        "references": ["#Person2#는 #Person1#에게 전화번호를 알려줍니다."],
    }


def test_chat_format_with_topic_and_without_system():
    row = format_chat_record(RECORD, {"system": "", "question": "요약해 주세요.", "topic": True})
    assert row["prompt"] == [{"role": "user", "content": "[Conversation]\n#Person1#: 전화번호가 뭐예요?\n"
                                                         "#Person2#: #PhoneNumber#이에요.\n\n[Question]\n요약해 주세요.\n주제: 연락처"}]


def test_test_split_has_no_completion():
    rec = dict(RECORD, summaries=[], topic=None)
    row = format_chat_record(rec, PLAIN)
    assert "completion" not in row and row["references"] == []


def test_seq2seq_format():
    assert format_seq2seq_record(RECORD) == {"fname": "t_1", "source": RECORD["dialogue"],
                                             "target": RECORD["summaries"][0], "references": RECORD["summaries"]}


def test_topic_format_refused_when_a_split_has_no_topic():
    with pytest.raises(PromptError) as err:
        format_split([RECORD, dict(RECORD, fname="t_2", topic=None)], "chat", "with-topic",
                     {"system": "", "question": "q", "topic": True}, split="test", source="data/test.jsonl")
    msg = str(err.value)
    assert "with-topic" in msg and "data/test.jsonl" in msg and "row 2" in msg and "t_2" in msg


def test_cli_writes_prompts_and_special_tokens(repo_root, tmp_path):
    data = tmp_path / "data"
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=repo_root, capture_output=True, text=True)
    p = run("scripts/ingest.py", "--train", "data/sample/train.csv", "--dev", "data/sample/dev.csv",
            "--test", "data/sample/test.csv", "--out-dir", str(data))
    assert p.returncode == 0, p.stderr
    out = tmp_path / "chat-plain"
    p = run("scripts/format_prompts.py", "--data-dir", str(data), "--family", "chat", "--format", "plain",
            "--out-dir", str(out))
    assert p.returncode == 0, p.stderr
    tokens = json.loads((out / "special_tokens.json").read_text(encoding="utf-8"))["tokens"]
    # collected from the data, not a hand-written list: the sample has 4 speakers and a date-of-birth mask
    assert {"#Person1#", "#Person4#", "#DateOfBirth#", "#PhoneNumber#", "#PassportNumber#"} <= set(tokens)
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 24 and all("completion" not in r for r in rows)
    # the shipped topic format is refused on the sample test split (no topics), and nothing is written
    bad = tmp_path / "chat-with-topic"
    p = run("scripts/format_prompts.py", "--data-dir", str(data), "--family", "chat", "--format", "with-topic",
            "--out-dir", str(bad))
    assert p.returncode == 2 and "has no topic" in p.stderr and not bad.exists()
    p = run("scripts/format_prompts.py", "--data-dir", str(data), "--family", "chat", "--format", "fancy",
            "--out-dir", str(bad))
    assert p.returncode == 2 and "prompt.formats" in p.stderr


@pytest.mark.integration
def test_prompts_on_real_data(repo_root, tmp_path, shared_data):
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=repo_root, capture_output=True, text=True)
    for name, args in {
        "ko": ["--train", str(shared_data / "ko/train_subset_2500.csv"), "--dev", str(shared_data / "ko/dev.csv"),
               "--test", str(shared_data / "ko/test.csv")],
        "dialogsum": ["--train", str(shared_data / "dialogsum/train.jsonl"), "--dev",
                      str(shared_data / "dialogsum/dev.jsonl"), "--test", str(shared_data / "dialogsum/test.jsonl"),
                      "--allow-leakage"],
    }.items():
        data = tmp_path / name / "data"
        p = run("scripts/ingest.py", *args, "--out-dir", str(data))
        assert p.returncode == 0, p.stderr
        for family, extra in (("seq2seq", []), ("chat", ["--format", "plain"])):
            out = tmp_path / name / family
            p = run("scripts/format_prompts.py", "--data-dir", str(data), "--family", family, *extra,
                    "--out-dir", str(out))
            assert p.returncode == 0, p.stderr
        tokens = json.loads((tmp_path / name / "chat" / "special_tokens.json").read_text(encoding="utf-8"))["tokens"]
        assert "#Person1#" in tokens and "#Person2#" in tokens
        if name == "ko":
            assert {"#PhoneNumber#", "#DateOfBirth#", "#Address#", "#PassportNumber#"} <= set(tokens)
            dev = [json.loads(x) for x in (tmp_path / name / "chat" / "dev.jsonl").read_text(encoding="utf-8").splitlines()]
            assert len(dev) == 499
        else:
            test = [json.loads(x) for x in (tmp_path / name / "seq2seq" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
            assert len(test) == 500 and all(len(r["references"]) == 3 for r in test)
