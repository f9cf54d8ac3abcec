"""Faults a user meets beyond hostile files: non-finite numbers in the config, a diverging training run, system
faults (disk full, read-only or unreadable paths, a FIFO as input) and files as users have them (long fields,
UTF-16, per-split encodings, test files without summaries, fnames with blanks). Each is one line, exit 2, and
nothing half-written (docs/RELIABILITY.md)."""

from __future__ import annotations

import copy
import dataclasses
import errno
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import built_once
from safetensors.torch import load_file, save_file

from kdsum.config.catalog import spec_for
from kdsum.config.files import ConfigError, deep_merge, merged_config
from kdsum.config.resolve import load_config, resolve, validate_config
from kdsum.config.spec import DataSpec, to_json
from kdsum.data.ingest import DataError, ingest_splits, load_split, read_split
from kdsum.data.prompts import write_prompt_set
from kdsum.errors import SystemFaultError
from kdsum.io import atomic_dir, faults_as_errors, read_json, write_json, write_jsonl
from kdsum.models.build import build_base_model
from kdsum.models.finite import NonFiniteWeightsError, check_finite_weights
from kdsum.training.hooks import DivergenceError, DivergenceGuard
from kdsum.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((ROOT / "tests" / "fixtures").glob("config.*.yaml"))
NON_FINITE = (float("nan"), float("inf"), float("-inf"))


# ------------------------------------------------------------------------------------------------ finite numbers
def numeric_leaves(value, path=()):
    """Every (path, number) leaf of a parsed YAML document; path items are keys or list indices."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in numeric_leaves(v, (*path, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in numeric_leaves(v, (*path, i))]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return [(path, value)] if is_number else []


def key_of(path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def overlay_setting(config: dict, path, value) -> dict:
    """The smallest overlay that sets ``path`` to ``value``: the mapping down to it (a list is replaced whole)."""
    head = next((i for i, p in enumerate(path) if isinstance(p, int)), len(path))
    node = config
    for p in path[:head]:
        node = node[p]
    if head < len(path):  # a list element: the overlay carries the list with that element changed
        node = copy.deepcopy(node)
        inner = node
        for p in path[head:-1]:
            inner = inner[p]
        inner[path[-1]] = value
    else:
        node = value
    for p in reversed(path[:head]):
        node = {p: node}
    return node


def _leaves() -> list:
    """The numeric leaves of config.yaml merged with each test overlay (the union, once per key)."""
    seen = {}
    for overlay in [None, *OVERLAYS]:
        files = [ROOT / "config.yaml", *([overlay] if overlay else [])]
        config = merged_config(files)
        for path, _ in numeric_leaves(config):
            seen.setdefault(key_of(path), (files, path))
    return sorted(seen.items())


LEAVES = _leaves()


def test_the_walk_covers_every_section():
    sections = {files_path[1][0] for _, files_path in LEAVES}
    assert {"defaults", "models", "variants", "decoding", "resources"} <= sections, sections
    assert len(LEAVES) > 50


@functools.cache
def _merged(files: tuple) -> dict:
    return merged_config(files)


@pytest.mark.parametrize(("key", "where"), LEAVES, ids=[k for k, _ in LEAVES])
def test_a_non_finite_number_is_refused_at_load_naming_its_key(key, where):
    files, path = where
    config = _merged(tuple(files))
    for value in NON_FINITE:
        # as an overlay file holds it: YAML's own spelling (.nan, .inf, -.inf), read back, merged on top
        text = yaml.safe_dump(overlay_setting(config, path, value))
        assert (".nan" if value != value else ".inf") in text
        with pytest.raises(ConfigError) as err:
            validate_config(deep_merge(config, yaml.safe_load(text)), source="overlay.yaml")
        assert str(err.value) == f"overlay.yaml: invalid value at key '{key}': {value} is not a finite number"


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", ".NaN", ".Inf"])
def test_a_non_finite_override_is_refused(text):
    # Snakemake's --config: a top-level key=value, or a nested mapping whose scalars arrive as strings
    flat = {"models__tiny-llama__train__learning_rate": yaml.safe_load(text)}
    nested = {"models": {"tiny-llama": {"train": {"learning_rate": text}}}}
    for overrides in (flat, nested):
        with pytest.raises(ConfigError, match=r"key 'models.tiny-llama.train.learning_rate': .* not a finite number"):
            load_config(ROOT / "config.yaml", overrides)


def test_the_cli_refuses_an_inf_learning_rate_in_one_line(tmp_path):
    overlay = tmp_path / "inf.yaml"
    overlay.write_text("defaults:\n  train:\n    learning_rate: .inf\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "kdsum", "spec", "--configfile", "config.yaml", "--configfile", str(overlay)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: config.yaml + {overlay}: invalid value at key 'defaults.train.learning_rate': inf is not a finite number"
    ]


@pytest.mark.parametrize(("value", "ok"), [(0, True), (1, True), (7, True), (0.5, True), (1.0, False), (2.0, False)])
def test_warmup_steps_is_whole_steps_as_an_integer_or_a_share_below_one(value, ok):
    overrides = {"defaults__train__warmup_steps": value}
    if ok:
        assert load_config(ROOT / "config.yaml", overrides)["defaults"]["train"]["warmup_steps"] == value
        return
    with pytest.raises(ConfigError, match=r"key 'defaults.train.warmup_steps': .*1.0 is refused as ambiguous"):
        load_config(ROOT / "config.yaml", overrides)


# ------------------------------------------------------------------------------------------------ divergence
def _build_tiny(root: Path) -> None:
    """Sample data, the chat prompts, and the tiny Llama with a token pretraining (seconds on one core)."""
    config = load_config(ROOT / "config.yaml")
    ingest_splits({s: ROOT / "data" / "sample" / f"{s}.csv" for s in ("train", "dev")}, root / "data")
    write_prompt_set(spec_for(config, "prompts/chat-plain"), root / "data", root / "prompts")
    job = resolve(config, "tiny-llama", "default")
    tokens = read_json(root / "prompts" / "special_tokens.json")["tokens"]
    texts = [r["dialogue"] for r in load_split(root / "data" / "train.jsonl")]
    build = dataclasses.replace(job.build, pretrain_steps=2, pretrain_batch_size=4)
    build_base_model("causal", build, texts, tokens, root / "base", progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "faults-tiny-llama", _build_tiny)


def test_a_diverging_learning_rate_stops_training_in_one_line_and_writes_no_model(tiny, tmp_path):
    torch.set_num_threads(int(os.environ.get("KDSUM_TEST_THREADS", "2")))
    job = resolve(load_config(ROOT / "config.yaml"), "tiny-llama", "default")
    # no config mistake: a finite learning rate, far too high (Adam's first step moves every weight by about it)
    settings = dict(learning_rate=1e30, max_steps=6, save_steps=1, logging_steps=1, warmup_steps=0)
    settings |= dict(lr_scheduler_type="constant", per_device_train_batch_size=4, max_length=384, bf16=False)
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, **settings))
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(DivergenceError) as err:
        train(job, str(tiny / "base"), tiny / "prompts", out, ckpt, progress=False)
    message = str(err.value)
    pattern = (
        r"training diverged at step (\d+): loss (nan|inf|-inf), gradient norm (nan|inf) "
        r"\(last finite loss [0-9.]+ at step (\d+)\); likely cause: train.learning_rate 1e\+30 is too high; "
        r"the last good checkpoint is kept \((.*/checkpoint-(\d+))\); no model written"
    )
    match = re.fullmatch(pattern, message)
    assert match, message
    step, last, kept, kept_step = int(match[1]), int(match[4]), Path(match[5]), int(match[6])
    assert 1 < step <= 6 and last == kept_step == step - 1
    assert not out.exists()  # nothing written as the model
    saved = load_file(str(kept / "adapter_model.safetensors"))
    assert saved and all(bool(torch.isfinite(t).all()) for t in saved.values())


def test_the_divergence_line_names_bf16_and_a_missing_checkpoint(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), learning_rate=2e-4, bf16=True, use_cpu=True)
    guard = DivergenceGuard()
    guard.check_step(args, 1, torch.tensor(3.25), torch.tensor(0.5))
    with pytest.raises(DivergenceError) as err:
        guard.check_step(args, 2, torch.tensor(float("inf")), torch.tensor(float("nan")))
    assert str(err.value) == (
        "training diverged at step 2: loss inf, gradient norm nan (last finite loss 3.25 at step 1); likely cause: "
        "train.learning_rate 0.0002 is too high, or bf16 overflowed (try train.bf16: false); "
        "no checkpoint was saved before it; no model written"
    )


def test_no_model_with_non_finite_weights_is_written(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny / "base")
    check_finite_weights(model, "base")  # the built model passes
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"^replica .*: 1 of \d+ weight tensors hold NaN or infinity"):
        check_finite_weights(model, f"replica {tmp_path / 'r'}")


# ------------------------------------------------------------------------------------------------ system faults
def _data_spec(path: Path, **splits) -> Path:
    spec = DataSpec(encoding="auto", leakage="report", near_duplicate_threshold=0.25, **splits)
    path.write_text(to_json(spec), encoding="utf-8")
    return path


def _kdsum(*args, cwd=ROOT, user: int | None = None, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "kdsum", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        user=user,
    )


def _one_line_refusal(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("20")]  # logging lines: dated
    assert lines == [f"error: {expected}"], proc.stderr


SAMPLE = {s: ROOT / "data" / "sample" / f"{s}.csv" for s in ("train", "dev", "test")}


def test_a_fifo_or_a_directory_as_input_is_refused_in_one_line(tmp_path):
    fifo = tmp_path / "train.csv"
    os.mkfifo(fifo)  # reading it would wait for a writer forever: the subprocess's timeout guards the test
    spec = _data_spec(tmp_path / "data.json", train=str(fifo), dev=None, test=None)
    proc = _kdsum("ingest", "--spec", spec, "--out-dir", tmp_path / "out", timeout=60)
    _one_line_refusal(proc, f"{fifo}: is a FIFO (named pipe), not a regular data file; name a regular file")
    folder = tmp_path / "dev.csv"
    folder.mkdir()
    # a directory where a stage's argument names a file: the OSError escapes the library, the CLI says it
    proc = _kdsum("ingest", "--spec", folder, "--out-dir", tmp_path / "out")
    _one_line_refusal(proc, f"{folder}: is a directory, where a file was expected; name the file, not the directory")
    with pytest.raises(SystemFaultError, match=r"dev.csv: is a directory, not a regular data file"):
        ingest_splits({"train": SAMPLE["train"], "dev": folder}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_full_disk_mid_write_is_one_line_and_leaves_nothing(tmp_path):
    def rows():  # what a write raises on a full disk, partway through the file
        yield {"fname": "a"}
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    target = tmp_path / "out" / "train.jsonl"
    with pytest.raises(SystemFaultError) as err:
        write_jsonl(target, rows())
    assert str(err.value) == (
        f"{target}: no space left on the device; free space there, or put results/ on a larger disk"
    )
    assert list((tmp_path / "out").iterdir()) == []  # neither the file nor its temporary
    with pytest.raises(SystemFaultError, match="no space left"), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("partial", encoding="utf-8")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]


def test_an_output_under_a_file_is_one_line(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a directory", encoding="utf-8")
    with pytest.raises(SystemFaultError, match=r"results/x.json: a part of the path is a file, not a directory"):
        write_json(blocker / "x.json", {})
    spec = _data_spec(tmp_path / "data.json", train=str(SAMPLE["train"]), dev=None, test=None)
    proc = _kdsum("ingest", "--spec", spec, "--out-dir", blocker / "data")
    expected = f"{blocker / 'data'}: a part of the path is a file, not a directory; remove or rename that file"
    _one_line_refusal(proc, expected)
    assert blocker.read_text(encoding="utf-8") == "not a directory"


def test_a_denied_output_directory_is_one_line(tmp_path):
    # root passes any mode: as root the directory is made immutable instead (chattr +i: EPERM even for root)
    out = tmp_path / "locked"
    out.mkdir()
    if os.geteuid() == 0:
        lock, unlock, reason = ["chattr", "+i", str(out)], ["chattr", "-i", str(out)], "operation not permitted"
        if subprocess.run(lock, capture_output=True).returncode != 0:
            pytest.skip(f"root here, and {tmp_path} takes no immutable flag (chattr)")
    else:
        os.chmod(out, 0o555)
        unlock, reason = None, "permission denied"
    try:
        spec = _data_spec(tmp_path / "data.json", train=str(SAMPLE["train"]), dev=None, test=None)
        proc = _kdsum("ingest", "--spec", spec, "--out-dir", out / "data")
        todo = "check its owner and mode (ls -ld), or run as its owner"
        _one_line_refusal(proc, f"{out / 'data'}: {reason} while writing; {todo}")
        assert list(out.iterdir()) == []
    finally:
        if unlock:
            subprocess.run(unlock, check=True)
        else:
            os.chmod(out, 0o755)


FAULTS = {
    errno.ENOSPC: "no space left on the device; free space there, or put results/ on a larger disk",
    errno.EDQUOT: "disk quota exceeded; free space within the quota, or put results/ elsewhere",
    errno.EROFS: "read-only file system; run where the output directory is writable (a writable copy or mount)",
    errno.EACCES: "permission denied while writing; check its owner and mode (ls -ld), or run as its owner",
    errno.EPERM: "operation not permitted while writing; check its owner and mode (ls -ld), or run as its owner",
}


@pytest.mark.parametrize("code", sorted(FAULTS), ids=[errno.errorcode[c] for c in sorted(FAULTS)])
def test_each_system_fault_while_writing_is_one_line_naming_the_path(tmp_path, code):
    # raised where the system raises it, inside the atomic writer (root cannot be denied, a disk is not full)
    def rows():
        yield {"fname": "a"}
        raise OSError(code, os.strerror(code))

    with pytest.raises(SystemFaultError) as err:
        write_jsonl(tmp_path / "train.jsonl", rows())
    assert str(err.value) == f"{tmp_path / 'train.jsonl'}: {FAULTS[code]}"
    assert list(tmp_path.iterdir()) == []


@pytest.fixture()
def tmpfs(tmp_path):
    """``tmpfs(size)``: a real file system of that size (root only: `mount -t tmpfs`); skipped where mounting is
    not allowed."""
    mounted = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"mnt{len(mounted)}"
        mnt.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"no tmpfs here (mount: {proc.stderr.decode().strip() or proc.returncode})")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture()
def small_tmpfs(tmpfs) -> Path:
    return tmpfs("64k")


def test_a_library_write_on_a_full_disk_is_one_line(small_tmpfs):
    # safetensors says the errno in its own words ("... (os error 28)")
    target = small_tmpfs / "model.safetensors"
    with pytest.raises(SystemFaultError, match=r"model.safetensors: no space left on the device; free space"):
        with faults_as_errors(target):
            save_file({"w": torch.zeros(100_000)}, str(target))


def test_a_full_disk_while_training_is_one_line_and_writes_no_model(tiny, tmpfs, tmp_path):
    torch.set_num_threads(int(os.environ.get("KDSUM_TEST_THREADS", "2")))
    job = resolve(load_config(ROOT / "config.yaml"), "tiny-llama", "default")
    settings = dict(learning_rate=1e-3, max_steps=3, save_steps=1, logging_steps=1, warmup_steps=0)
    settings |= dict(lr_scheduler_type="constant", per_device_train_batch_size=4, max_length=384, bf16=False)
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, **settings))
    ckpt, out = tmpfs("1m") / "ckpt", tmp_path / "out"  # the adapter fits, the optimizer state does not (torch)
    with pytest.raises(SystemFaultError) as err:
        train(job, str(tiny / "base"), tiny / "prompts", out, ckpt, progress=False)
    assert str(err.value) == f"{ckpt}: no space left on the device; free space there, or put results/ on a larger disk"
    assert not out.exists()


def test_a_full_and_a_read_only_file_system_are_one_line(small_tmpfs, tmp_path):
    spec = _data_spec(tmp_path / "data.json", train=str(SAMPLE["train"]), dev=str(SAMPLE["dev"]), test=None)
    out = small_tmpfs / "data"  # the sample's train.jsonl alone is larger than the file system
    proc = _kdsum("ingest", "--spec", spec, "--out-dir", out)
    assert proc.returncode == 2 and "no space left on the device" in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
    assert list(small_tmpfs.iterdir()) == []  # no partial output, no temporaries
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    proc = _kdsum("ingest", "--spec", spec, "--out-dir", out)
    expected = f"{out}: read-only file system; run where the output directory is writable (a writable copy or mount)"
    _one_line_refusal(proc, expected)


# ------------------------------------------------------------------------------------------------ files as users have them
HEADER = "fname,dialogue,summary,topic\n"
TRAIN_ROWS = {
    "train_1": ("#Person1#: 안녕하세요, 무엇을 도와드릴까요?\n#Person2#: 제 전화번호를 바꾸고 싶어요.", "번호 변경"),
    "train_2": ("#Person1#: 내일 몇 시에 만날까?\n#Person2#: 세 시 어때? 역 앞에서 보자.", "약속"),
}
DEV_ROWS = {"dev_1": ("#Person1#: 오늘 날씨가 정말 춥네요.\n#Person2#: 네, 눈이 올 것 같아요.", "날씨 이야기")}


def _csv(path: Path, rows: dict, encoding: str = "utf-8", header: str = HEADER) -> Path:
    body = "".join(f'{f},"{d}","{s}",topic\n' for f, (d, s) in rows.items())
    path.write_bytes((header + body).encode(encoding))
    return path


def test_a_dialogue_of_a_million_characters_is_read_whole(tmp_path):
    first = "가나다라마바사아자차 " * 99_998 + "끝"  # 999,981 characters: the turn's text
    dialogue = f"#Person1#: {first}\n#Person2#: 네."
    assert len(dialogue) >= 1_000_000  # csv's own limit is 131,072
    records = read_split(_csv(tmp_path / "train.csv", {"long_1": (dialogue, "긴 대화")}), "train")
    assert [t["text"] for t in records[0]["turns"]] == [first, "네."]


def test_data_encoding_per_split(tmp_path):
    train = _csv(tmp_path / "train.csv", TRAIN_ROWS, encoding="utf-16")
    dev = _csv(tmp_path / "dev.csv", DEV_ROWS)
    with pytest.raises(DataError, match=r"dev.csv: missing required column"):  # utf-16 for every split: garbage
        ingest_splits({"train": train, "dev": dev}, tmp_path / "one", encoding="utf-16")
    stats = ingest_splits({"train": train, "dev": dev}, tmp_path / "out", encoding={"train": "utf-16"})
    assert {s: v["encoding"] for s, v in stats["splits"].items()} == {"train": "utf-16", "dev": "utf-8"}
    assert [r["fname"] for r in load_split(tmp_path / "out" / "train.jsonl")] == ["train_1", "train_2"]
    # the config takes either form, and a mapping names splits only
    config = load_config(ROOT / "config.yaml", {"data__encoding": {"train": "utf-16"}})
    assert spec_for(config, "data").encoding == {"train": "utf-16"}
    assert load_config(ROOT / "config.yaml", {"data__encoding": "cp949"})["data"]["encoding"] == "cp949"
    with pytest.raises(ConfigError, match=r"key 'data.encoding': .* a mapping per split"):
        load_config(ROOT / "config.yaml", {"data__encoding": {"trian": "utf-16"}})


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_gets_the_right_advice(tmp_path, codec):
    path = _csv(tmp_path / "train.csv", TRAIN_ROWS, encoding=codec)
    with pytest.raises(DataError) as err:
        read_split(path, "train")
    message = str(err.value)
    assert f"looks like {codec.upper()} without a byte-order mark" in message and "cp1252" not in message
    assert f"set data.encoding: {codec}" in message
    assert [r["fname"] for r in read_split(path, "train", encoding=codec)] == ["train_1", "train_2"]


def test_a_test_file_without_summaries_is_accepted(tmp_path):
    rows = {"test_1": (DEV_ROWS["dev_1"][0], ""), "test_2": (TRAIN_ROWS["train_2"][0], "약속")}
    records = read_split(_csv(tmp_path / "test.csv", rows), "test")  # an empty summary column
    assert [r["summaries"] for r in records] == [[], ["약속"]]
    absent = tmp_path / "absent.csv"
    absent.write_text('fname,dialogue\ntest_1,"#Person1#: 안녕.\n#Person2#: 네."\n', encoding="utf-8")
    assert read_split(absent, "test")[0]["summaries"] == []
    with pytest.raises(DataError, match=r"row 1 \(fname 'test_1'\), column 'summary': empty summary"):
        read_split(_csv(tmp_path / "train.csv", rows), "train")  # a training row needs its summary


@pytest.mark.parametrize("fname", [" test_1", "test_1 ", "test_1\t", "\u3000test_1", "test_1\u200b "])
def test_an_fname_with_blanks_around_it_is_refused_naming_the_row(tmp_path, fname):
    path = _csv(tmp_path / "test.csv", {"test_0": DEV_ROWS["dev_1"], fname: TRAIN_ROWS["train_1"]})
    with pytest.raises(DataError) as err:
        read_split(path, "test")
    shown = fname.replace("\u200b", "")  # invisible characters are removed (and counted) as in every text
    assert str(err.value) == (
        f"{path}: row 2, column 'fname': {shown!r} has blanks around it; the submission's id must match the "
        "organisers' exactly, so they are not stripped: fix the file (e.g. to 'test_1')"
    )


def test_fnames_are_kept_byte_for_byte(tmp_path):
    fnames = ["Test_001", "test 2", "테스트_3"]  # case, an inner blank, Hangul: ids as the organisers wrote them
    rows = {f: (DEV_ROWS["dev_1"][0] + f" {i}", "") for i, f in enumerate(fnames)}
    assert [r["fname"] for r in read_split(_csv(tmp_path / "test.csv", rows), "test")] == fnames
