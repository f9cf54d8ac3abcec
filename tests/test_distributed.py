"""GPU slots (kdsum.gpu.slots) and multi-GPU training (kdsum.gpu.distributed), on a CPU: slots on simulated devices
(``KDSUM_GPUS``), DDP as two gloo processes under torchrun, started by ``kdsum train`` itself."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kdsum.config.catalog import spec_for
from kdsum.config.files import ConfigError
from kdsum.config.resolve import load_config, resolve
from kdsum.config.spec import BatchError, per_rank_accumulation, to_json
from kdsum.data.ingest import ingest_splits, load_split
from kdsum.data.prompts import write_prompt_set
from kdsum.gpu.distributed import launch_command
from kdsum.gpu.slots import GpuSlotError, acquire, device_ids
from kdsum.io import read_json, write_text
from kdsum.models.build import build_base_model
from kdsum.training.checkpoints import last_complete_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------- GPU slots
HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from kdsum.gpu.slots import claim
    with claim(int(sys.argv[1])) as ids:
        print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        while not Path(sys.argv[2]).exists():
            time.sleep(0.05)
    """
)


def _holder(tmp_path, gpus: int, n: int = 1, release: str = "release") -> subprocess.Popen:
    env = {**ENV, "KDSUM_GPUS": str(gpus), "KDSUM_GPU_SLOTS_DIR": str(tmp_path / "slots")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-c", HOLDER, str(n), str(tmp_path / release)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line:
            return line.strip()
        if proc.poll() is not None:
            break
    raise AssertionError(f"no device ids from the holder (exit {proc.poll()})")


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_concurrent_jobs_get_distinct_devices(tmp_path):
    procs = [_holder(tmp_path, gpus=3) for _ in range(3)]
    try:
        ids = sorted(_line(p) for p in procs)
        assert ids == ["0", "1", "2"]
        (tmp_path / "release").touch()
        assert [p.wait(timeout=30) for p in procs] == [0, 0, 0]
    finally:
        _stop(*procs)


def test_waits_when_all_busy_and_a_killed_holder_frees_its_slot(tmp_path):
    first = _holder(tmp_path, gpus=2, n=2)
    waiting = None
    try:
        assert _line(first) == "0,1"
        waiting = _holder(tmp_path, gpus=2, n=1)
        time.sleep(1.5)
        assert waiting.poll() is None  # still waiting: both slots are held
        first.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the flock
        first.wait()
        assert _line(waiting) in ("0", "1")
    finally:
        (tmp_path / "release").touch()
        _stop(first, *([waiting] if waiting else []))


def test_a_multi_gpu_claim_takes_all_or_none(tmp_path):
    held = acquire(1, ["0", "1", "2"], tmp_path)
    try:
        both = acquire(2, ["0", "1", "2"], tmp_path, timeout=1)
        assert sorted(both.ids) == ["1", "2"]
        with pytest.raises(TimeoutError):  # one free slot is not two: it is given back, not kept
            acquire(2, ["0", "1", "2"], tmp_path, timeout=0.3, poll=0.05)
        both.release()
        again = acquire(1, ["0", "1", "2"], tmp_path, timeout=1)
        assert again.ids == ["1"]
        again.release()
    finally:
        held.release()
    with pytest.raises(GpuSlotError, match="needs 3 GPU"):
        acquire(3, ["0", "1"], tmp_path)


def test_device_ids_sources():
    assert device_ids({"KDSUM_GPUS": "2", "CUDA_VISIBLE_DEVICES": "5"}) == ["0", "1"]
    assert device_ids({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert device_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(GpuSlotError, match="KDSUM_GPUS"):
        device_ids({"KDSUM_GPUS": "two"})


def test_a_ddp_training_job_declares_its_gpus_to_snakemake():
    """The train rule's gpu resource is resources.train.gpu x train.num_gpus, so --resources gpu=N counts ranks."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1", "results/summary.csv", "--config"]
    cmd += ["models__tiny-llama__train__num_gpus=2", "models__tiny-llama__train__gradient_accumulation_steps=2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = re.findall(r"rule train:.*?wildcards: (.*?)\n\s*resources: (.*?)\n", done.stdout + done.stderr, re.S)
    train = dict(blocks)
    assert "gpu=2" in train["model=tiny-llama, variant=default"]
    assert "gpu=1" in train["model=tiny-bart, variant=default"]


# --------------------------------------------------------------------------------------------- the global batch
def test_accumulation_is_divided_and_a_remainder_refused(monkeypatch, tmp_path):
    from kdsum.training.trainer import arguments_class, trainer_arguments

    assert per_rank_accumulation(16, 4) == 4
    with pytest.raises(BatchError, match="'train.gradient_accumulation_steps' \\(3\\).*'train.num_gpus' \\(2\\)"):
        per_rank_accumulation(3, 2)
    job = resolve(load_config(REPO / "config.yaml"), "tiny-bart")
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, gradient_accumulation_steps=8))
    one = arguments_class(job.family)(**trainer_arguments(job, None, str(tmp_path)))
    assert one.gradient_accumulation_steps == 8 and one.ddp_find_unused_parameters is None
    monkeypatch.setenv("WORLD_SIZE", "2")  # (arguments built under it would start accelerate's process group)
    two = trainer_arguments(job, None, str(tmp_path))
    assert two["gradient_accumulation_steps"] == 4 and two["ddp_find_unused_parameters"] is False
    assert two["learning_rate"] == one.learning_rate == job.train.learning_rate
    assert launch_command(["train", "--spec", "s"], 2)[-4:] == ["kdsum", "train", "--spec", "s"]


def test_config_refuses_accumulation_that_does_not_divide():
    overrides = {"models": {"tiny-llama": {"train": {"num_gpus": 2, "gradient_accumulation_steps": 3}}}}
    with pytest.raises(ConfigError, match="'train.gradient_accumulation_steps' \\(3\\).*models.tiny-llama"):
        load_config(REPO / "config.yaml", overrides)
    ok = {"models": {"tiny-llama": {"train": {"num_gpus": 2, "gradient_accumulation_steps": 4}}}}
    assert resolve(load_config(REPO / "config.yaml", ok), "tiny-llama").train.num_gpus == 2


def test_memory_plan_per_rank_adds_ddp_buckets():
    """Each rank holds the whole model and its own micro-batch (the single-GPU plan) plus DDP's gradient buckets:
    one more copy of the adapters' gradients, 4 bytes each under LoRA, 2 under QLoRA."""
    from kdsum.gpu.memory import GIB, estimate_peak_memory, lora_parameter_count, model_dims

    llama_3b = dict(
        model_type="llama",
        hidden_size=3072,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
    )
    adapters = lora_parameter_count(model_dims(llama_3b), 16)
    for method, grad_bytes in (("lora", 4), ("qlora", 2)):
        one = estimate_peak_memory(llama_3b, method, 8, 1024, True, True, 16, attention="varlen")
        two = estimate_peak_memory(llama_3b, method, 8, 1024, True, True, 16, attention="varlen", world_size=2)
        assert "ddp_buckets" not in one["parts"]
        assert two["parts"]["ddp_buckets"] == pytest.approx(adapters * grad_bytes / GIB, abs=1e-3)
        assert {k: v for k, v in two["parts"].items() if k != "ddp_buckets"} == one["parts"]
        assert two["total_gb"] == pytest.approx(one["total_gb"] + two["parts"]["ddp_buckets"], abs=2e-3)


# --------------------------------------------------------------------------------------------- DDP on CPU (gloo)
TRAIN = dict(
    max_steps=8,
    logging_steps=1,
    save_steps=1000,
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_length=256,
    warmup_steps=0,
    learning_rate=5e-3,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The sample data as chat prompts and the tiny Llama, built with a short pretraining."""
    root = tmp_path_factory.mktemp("ddp")
    config = load_config(REPO / "config.yaml")
    data = root / "data"
    ingest_splits({s: REPO / "data" / "sample" / f"{s}.csv" for s in ("train", "dev", "test")}, data)
    prompts = root / "prompts" / "chat-plain"
    write_prompt_set(spec_for(config, "prompts/chat-plain"), data, prompts)
    job = resolve(config, "tiny-llama", "default")
    build = dataclasses.replace(job.build, pretrain_steps=10, pretrain_batch_size=8)
    dialogues = [r["dialogue"] for r in load_split(data / "train.jsonl")]
    tokens = read_json(prompts / "special_tokens.json")["tokens"]
    build_base_model(job.family, build, dialogues, tokens, root / "base", progress=False)
    # no dropout: ranks draw different dropout masks than one process would
    lora = dataclasses.replace(job.lora, lora_dropout=0.0)
    return {"root": root, "prompts": prompts, "base": root / "base", "job": dataclasses.replace(job, lora=lora)}


def _train_cmd(tiny, tmp_path, name, num_gpus, **train):
    job = tiny["job"]
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, **{**TRAIN, **train, "num_gpus": num_gpus}))
    spec = tmp_path / "specs" / f"{name}.json"
    write_text(spec, to_json(job))
    out, ckpt = tmp_path / "results" / "train" / name, tmp_path / "ckpt" / name
    cmd = [sys.executable, "-m", "kdsum", "train", "--spec", str(spec), "--prompts-dir", str(tiny["prompts"])]
    cmd += ["--base-dir", str(tiny["base"]), "--out-dir", str(out), "--checkpoint-dir", str(ckpt)]
    return [*cmd, "--threads", "1", "--no-progress"], out, ckpt


def _losses(out: Path) -> list[float]:
    import csv

    with open(out / "log_history.csv", encoding="utf-8") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r["loss"]]


def _run(cmd, timeout=400):
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=cmd_cwd(cmd))
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def cmd_cwd(cmd) -> str:
    return str(Path(cmd[cmd.index("--out-dir") + 1]).parents[2])  # the tmp dir holding results/


def _processes_running(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (a job's spec path)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_two_gloo_ranks_match_one_process_and_resume_after_a_kill(tiny, tmp_path):
    """One process vs two ranks (accumulation 2 -> 1 each) at the same global batch; the two-rank run is killed
    (its launcher, SIGKILL) after its first checkpoint and resumed: per-step losses and the token count must
    still be those of the one uninterrupted process."""
    one, out1, _ = _train_cmd(tiny, tmp_path, "one", num_gpus=1)
    two, out2, ckpt2 = _train_cmd(tiny, tmp_path, "two", num_gpus=2, save_steps=1)
    _run(one)
    spec = two[two.index("--spec") + 1]
    proc = subprocess.Popen(two, env=ENV, cwd=cmd_cwd(two), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and last_complete_checkpoint(ckpt2) is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    finally:
        proc.send_signal(signal.SIGKILL)  # the launcher only: torchrun gets SIGTERM from the kernel, then the ranks
        proc.wait()
    deadline = time.time() + 60
    while _processes_running(spec) and time.time() < deadline:
        time.sleep(0.2)
    assert not _processes_running(spec), "ranks outlived their killed launcher"
    killed_at = int(Path(last_complete_checkpoint(ckpt2)).name.split("-")[1])
    assert 0 < killed_at < TRAIN["max_steps"] and not out2.exists()

    done = _run(two)
    assert done.stdout.count("trained tiny-llama/default") == 1  # rank 0 reports
    assert f"resumed from step {killed_at}" in done.stdout
    m1, m2 = read_json(out1 / "train_metrics.json"), read_json(out2 / "train_metrics.json")
    assert (m1["world_size"], m2["world_size"]) == (1, 2)
    assert m2["resumed_from_step"] == killed_at and m2["steps"] == m1["steps"] == TRAIN["max_steps"]
    assert 0 < m2["train_tokens_this_run"] < m2["train_tokens"]
    # the same rows each step: every rank's tokens add up to what one process saw
    assert m2["train_tokens"] == m1["train_tokens"] > 0
    l1, l2 = _losses(out1), _losses(out2)
    assert len(l1) == len(l2) == TRAIN["max_steps"]
    assert l2 == pytest.approx(l1, rel=2e-3, abs=2e-3), (l1, l2)
    assert not ckpt2.exists()
