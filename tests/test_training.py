"""Training stage: LoRA and full fine-tunes on the offline tiny models, resume after a kill, fingerprints, packing,
completion-only masking, and (on a GPU) QLoRA.

A session fixture builds the tiny base models with a short pretraining (the jobs of config.yaml with test
settings), so the whole module stays around two minutes on two CPU cores.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import built_once

from kdsum.config.catalog import spec_for
from kdsum.config.resolve import load_config, resolve
from kdsum.config.spec import to_json
from kdsum.data.ingest import ingest_splits, load_split
from kdsum.data.prompts import write_prompt_set
from kdsum.io import read_json, read_jsonl, write_json, write_jsonl, write_text
from kdsum.models.build import build_base_model
from kdsum.models.loading import load_for_generation, load_tokenizer
from kdsum.training.checkpoints import (
    FINGERPRINT_FILE,
    checkpoint_problem,
    compute_fingerprint,
    last_complete_checkpoint,
    prepare_checkpoint_dir,
)
from kdsum.training.report import SUMMARY_KEYS
from kdsum.training.trainer import build_trainer, train

REPO = Path(__file__).resolve().parents[1]
METRIC_FIELDS = (
    "model",
    "variant",
    "family",
    "method",
    "method_effective",
    "warnings",
    "wall_time_s",
    "train_tokens",
    "tokens_per_s",
    "steps",
    "epochs",
    "trainable_params",
    "total_params",
    "peak_memory_gb",
    "memory_device",
    "first_loss",
    "final_loss",
    "best_loss",
    "max_grad_norm",
    "resumed_from_step",
    "versions",
    "seed",
)
# the tiny models' test settings: a short pretraining, 12 optimizer steps, every step logged
TEST_BUILD = dict(pretrain_steps=20, pretrain_batch_size=8)
TEST_TRAIN = dict(
    logging_steps=1,
    save_steps=1000,
    save_total_limit=2,
    max_length=384,
    per_device_train_batch_size=4,
    max_steps=12,
    warmup_steps=0,
)
TEST_TRAIN_MODEL = {"tiny-llama": dict(learning_rate=5e-3)}

# 2 threads on the 2-core CI runner; on a machine shared with other jobs KDSUM_TEST_THREADS=1 avoids OpenMP
# oversubscription, which was measured to slow these tiny models down up to ~10x
THREADS = int(os.environ.get("KDSUM_TEST_THREADS", "2"))
torch.set_num_threads(THREADS)


def _with(job, train=None, lora=None, generation=None, **fields):
    """``job`` with some settings changed (a Job and its sections are frozen)."""
    for section, changes in (("train", train), ("lora", lora), ("generation", generation)):
        if changes:
            fields[section] = dataclasses.replace(getattr(job, section), **changes)
    return dataclasses.replace(job, **fields)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """Sample data ingested and formatted, tiny bases built with a short pretraining (once per test run, shared by
    the xdist workers: read only)."""
    return _env(built_once(tmp_path_factory, "training", _build_env))


def _env(root: Path) -> dict:
    config = load_config(REPO / "config.yaml")
    prompts = {"seq2seq": root / "prompts" / "seq2seq", "causal": root / "prompts" / "chat-plain"}
    bases = {name: root / "base" / name for name in ("tiny-bart", "tiny-llama")}
    return {"root": root, "config": config, "prompts": prompts, "bases": bases}


def _build_env(root: Path) -> None:
    env = _env(root)
    data = root / "data"
    ingest_splits({s: REPO / "data" / "sample" / f"{s}.csv" for s in ("train", "dev", "test")}, data)
    records = load_split(data / "train.jsonl")
    for d in env["prompts"].values():
        write_prompt_set(spec_for(env["config"], f"prompts/{d.name}"), data, d)
    tokens = read_json(env["prompts"]["causal"] / "special_tokens.json")["tokens"]
    for name, base in env["bases"].items():
        job = _spec(env, name)
        build_base_model(job.family, job.build, [r["dialogue"] for r in records], tokens, base, progress=False)


def _spec(env, model, **train_overrides):
    """The job of ``model`` (variant default) with the test settings (tiny models) and ``train_overrides``."""
    job = resolve(env["config"], model, "default")
    if not job.build:  # a hub model: the config's settings
        return _with(job, train=train_overrides)
    job = _with(job, build=dataclasses.replace(job.build, **TEST_BUILD))
    return _with(job, train={**TEST_TRAIN, **TEST_TRAIN_MODEL.get(model, {}), **train_overrides})


def _mean(xs):
    return sum(xs) / len(xs)


def _losses(history):
    return [r["loss"] for r in history if "loss" in r]


def _read_log(path):
    import csv

    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------- 1. causal LoRA
def test_causal_lora_trains_reloads_and_generates(env, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = _spec(env, "tiny-llama")
    out = tmp_path / "train" / "tiny-llama" / "default"
    metrics = train(
        spec, str(env["bases"]["tiny-llama"]), env["prompts"]["causal"], out, tmp_path / "ckpt", progress=False
    )

    assert sorted(p.name for p in out.iterdir()) == [
        "candidates",
        "log_history.csv",
        "model",
        "tracking",
        "train_metrics.json",
        "train_summary.json",
    ]
    saved = read_json(out / "train_metrics.json")
    assert saved == json.loads(json.dumps(metrics))
    missing = [k for k in METRIC_FIELDS if k not in saved]
    assert not missing, missing
    assert saved["method"] == saved["method_effective"] == "lora" and saved["warnings"] == []
    # train.report_to's default: DVCLive's curve is the log history at the optimizer steps (kdsum.training.tracking)
    logged = [(int(r["step"]), float(r["loss"])) for r in _read_log(out / "log_history.csv") if r["loss"]]
    with open(out / "tracking/dvclive/plots/metrics/loss.tsv", encoding="utf-8") as fh:
        curve = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(fh, delimiter="\t")]
    assert curve == pytest.approx(logged) and [s for s, _ in curve] == list(range(1, 13))
    assert read_json(out / "train_summary.json") == {k: saved[k] for k in SUMMARY_KEYS}
    assert saved["steps"] == 12 and saved["resumed_from_step"] is None and saved["seed"] == 42
    assert 0 < saved["trainable_params"] < saved["total_params"]
    assert saved["train_tokens"] > 0 and saved["tokens_per_s"] > 0 and saved["peak_memory_gb"] > 0
    assert saved["memory_device"] == "cpu" or saved["memory_device"].startswith("cuda:")
    assert saved["versions"]["trl"] and saved["versions"]["transformers"]

    rows = _read_log(out / "log_history.csv")
    assert list(rows[0])[:5] == ["step", "epoch", "loss", "learning_rate", "grad_norm"]
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 12
    assert _mean(losses[-3:]) < _mean(losses[:3]) - 0.1, losses
    assert saved["first_loss"] == pytest.approx(losses[0]) and saved["final_loss"] == pytest.approx(losses[-1])
    assert saved["best_loss"] == pytest.approx(min(losses))
    # the largest grad norm over every optimizer step is at least the largest logged one
    logged = [float(r["grad_norm"]) for r in rows if r["grad_norm"]]
    assert saved["max_grad_norm"] >= max(logged) - 1e-6 and saved["grad_norm_steps"] == 12
    assert not (tmp_path / "ckpt").exists()  # checkpoints removed after success

    # the adapter reloads on the base with plain PEFT, and through the pipeline's loader (merged); it generates via
    # the chat template
    base = AutoModelForCausalLM.from_pretrained(env["bases"]["tiny-llama"])
    model = PeftModel.from_pretrained(base, str(out / "model")).eval()
    tok = load_tokenizer(str(out / "model"), "tiny-llama", "causal")
    row = read_jsonl(env["prompts"]["causal"] / "train.jsonl")[0]
    enc = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    new = gen[0, enc["input_ids"].shape[1] :]
    assert len(new) > 0 and tok.decode(new, skip_special_tokens=True).strip()
    lm = load_for_generation(spec, model_dir=out / "model", base_dir=env["bases"]["tiny-llama"], device="cpu")
    assert lm.merged and lm.adapter == str(out / "model") and lm.base == str(env["bases"]["tiny-llama"])
    with torch.no_grad():
        assert torch.equal(lm.model.generate(**enc, max_new_tokens=12, do_sample=False), gen)


# --------------------------------------------------------------------------------------------- 2. seq2seq full
def test_seq2seq_full_finetune_trains_reloads_and_generates(env, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from kdsum.models.fitting import encode_seq2seq

    spec = _spec(env, "tiny-bart")
    out = tmp_path / "train"
    metrics = train(
        spec, str(env["bases"]["tiny-bart"]), env["prompts"]["seq2seq"], out, tmp_path / "ckpt", progress=False
    )
    assert metrics["method_effective"] == "full" and metrics["trainable_params"] == metrics["total_params"]
    assert all(k in metrics for k in METRIC_FIELDS)
    losses = [float(r["loss"]) for r in _read_log(out / "log_history.csv") if r["loss"]]
    assert len(losses) == 12 and _mean(losses[-3:]) < _mean(losses[:3]) - 0.1, losses
    # target tokens count too: more than the encoder inputs alone
    assert metrics["train_tokens"] > 0

    model = AutoModelForSeq2SeqLM.from_pretrained(out / "model").eval()
    tok = load_tokenizer(str(out / "model"), "tiny-bart", "seq2seq")
    src = read_jsonl(env["prompts"]["seq2seq"] / "train.jsonl")[0]["source"]
    ids = torch.tensor([encode_seq2seq(tok, src, 384)])
    with torch.no_grad():
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    # after a dozen steps a tiny model may still emit only word-boundary pieces: require real (non-special) tokens
    new = [t for t in gen[0].tolist() if t not in tok.all_special_ids]
    assert len(new) > 0 and isinstance(tok.decode(gen[0], skip_special_tokens=True), str)


# --------------------------------------------------------------------------------------------- 3. resume
def _train_cmd(env, out, ckpt, spec_path):
    return [
        sys.executable,
        "-m",
        "kdsum",
        "train",
        "--spec",
        str(spec_path),
        "--prompts-dir",
        str(env["prompts"]["seq2seq"]),
        "--base-dir",
        str(env["bases"]["tiny-bart"]),
        "--out-dir",
        str(out),
        "--checkpoint-dir",
        str(ckpt),
        "--threads",
        str(THREADS),
        "--no-progress",
    ]


def test_resume_after_sigkill(env, tmp_path):
    job = _spec(
        env, "tiny-bart", max_steps=14, save_steps=2, save_total_limit=2, per_device_train_batch_size=2, max_length=128
    )
    spec_path = tmp_path / "specs" / "model" / "tiny-bart" / "default.json"
    write_text(spec_path, to_json(job))
    out, ckpt = tmp_path / "results" / "train" / "tiny-bart" / "default", tmp_path / "ckpt"
    cmd = _train_cmd(env, out, ckpt, spec_path)
    envvars = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    proc = subprocess.Popen(cmd, env=envvars, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if last_complete_checkpoint(ckpt) is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"finished or failed before a checkpoint appeared: {proc.stderr.read()[-2000:]}"
        assert last_complete_checkpoint(ckpt) is not None, "no checkpoint within the deadline"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists(), "a killed run left an output directory"
    killed_at = last_complete_checkpoint(ckpt)
    n = int(Path(killed_at).name.split("-")[1])
    assert 0 < n < 14

    done = subprocess.run(cmd, env=envvars, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {n}" in done.stdout
    metrics = read_json(out / "train_metrics.json")
    assert metrics["resumed_from_step"] == n and metrics["steps"] == 14
    # the second process trained only the remaining steps ...
    assert 0 < metrics["train_tokens_this_run"] < metrics["train_tokens"]
    assert metrics["grad_norm_steps"] == 14  # ... and the grad-norm tracker carried over from the checkpoint
    # one history: steps 1..n restored from the checkpoint, then n+1..14, nothing restarted at zero
    steps = [int(r["step"]) for r in _read_log(out / "log_history.csv") if r["loss"]]
    assert steps == list(range(1, 15)), steps
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert not ckpt.exists()


# --------------------------------------------------------------------------------------------- 4. qlora on CPU
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback of qlora")
def test_qlora_entry_on_cpu_runs_as_lora(env, tmp_path):
    spec = _with(_spec(env, "tiny-llama", max_steps=2), method="qlora")
    metrics = train(
        spec,
        str(env["bases"]["tiny-llama"]),
        env["prompts"]["causal"],
        tmp_path / "out",
        tmp_path / "ckpt",
        progress=False,
    )
    assert metrics["method"] == "qlora" and metrics["method_effective"] == "lora"
    assert any("qlora" in w and "LoRA" in w for w in metrics["warnings"]), metrics["warnings"]
    assert read_json(tmp_path / "out" / "train_metrics.json")["warnings"] == metrics["warnings"]
    assert (tmp_path / "out" / "model" / "adapter_config.json").exists()


# --------------------------------------------------------------------------------------------- hub tokenizers
def test_hub_tokenizer_gets_data_tokens_and_trains_only_their_rows(env, tmp_path):
    """A "hub" model whose tokenizer splits #Person1# etc.: the data tokens are added, the embeddings grown, and
    just those rows trained (PEFT trainable tokens, input and untied output side); the adapter reloads."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kdsum.models.build import train_tokenizer

    records = load_split(env["root"] / "data" / "train.jsonl")
    tok = train_tokenizer([r["dialogue"] for r in records], 1500, [], "causal")  # no data tokens
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        vocab_size=len(tok),
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    hub = tmp_path / "hub"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(hub)
    tok.save_pretrained(hub)
    spec = _with(
        _spec(
            env,
            "llama-ko-3b",
            max_steps=3,
            logging_steps=1,
            per_device_train_batch_size=2,
            gradient_checkpointing=False,
            learning_rate=1e-2,
            warmup_steps=0,
            save_steps=1000,
        ),
        source=str(hub),
    )
    n_tokens = len(read_json(env["prompts"]["causal"] / "special_tokens.json")["tokens"])
    metrics = train(spec, str(hub), env["prompts"]["causal"], tmp_path / "out", tmp_path / "ckpt", progress=False)
    assert metrics["new_data_tokens"] == n_tokens
    saved = load_file(str(tmp_path / "out" / "model" / "adapter_model.safetensors"))
    deltas = {k: v for k, v in saved.items() if "trainable_tokens_delta" in k}
    assert sorted(k.split(".")[-3] for k in deltas) == ["embed_tokens", "lm_head"]
    assert all(v.shape == (n_tokens, 64) for v in deltas.values())
    assert not any(k.endswith("embed_tokens.weight") or k.endswith("lm_head.weight") for k in saved)

    lm = load_for_generation(spec, model_dir=tmp_path / "out" / "model", device="cpu")  # the base: spec.source
    model, tok2 = lm.model, lm.tokenizer
    assert lm.base == str(hub) and lm.merged
    assert len(tok2) == len(tok) + n_tokens and tok2.tokenize("#Person1#") == ["#Person1#"]
    new_ids = tok2.convert_tokens_to_ids(["#Person1#", "#Person2#"])
    emb_delta = next(v for k, v in deltas.items() if "embed_tokens" in k)
    first_new = len(tok)
    with torch.no_grad():
        emb = model.get_input_embeddings()(torch.tensor(new_ids))
    assert torch.allclose(emb, emb_delta[[i - first_new for i in new_ids]].float())
    row = read_jsonl(env["prompts"]["causal"] / "train.jsonl")[0]
    enc = tok2.apply_chat_template(row["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert model.generate(**enc, max_new_tokens=4, do_sample=False).shape[1] > enc["input_ids"].shape[1]


# --------------------------------------------------------------------------------------------- 5. fingerprints
def test_fingerprint_covers_training_settings_only(env):
    base, prompts = str(env["bases"]["tiny-llama"]), env["prompts"]["causal"]
    spec = _spec(env, "tiny-llama")
    fp = compute_fingerprint(spec, base, prompts, "lora")["fingerprint"]
    assert compute_fingerprint(_with(spec), base, prompts, "lora")["fingerprint"] == fp
    for change in ({"learning_rate": 1e-4}, {"lr_scheduler_type": "constant"}, {"packing": True}, {"seed": 1}):
        other = _with(spec, train=change)
        assert compute_fingerprint(other, base, prompts, "lora")["fingerprint"] != fp, change
    assert compute_fingerprint(_with(spec, lora={"lora_alpha": 0.5}), base, prompts, "lora")["fingerprint"] != fp
    assert compute_fingerprint(spec, base, prompts, "qlora")["fingerprint"] != fp
    assert compute_fingerprint(spec, str(env["bases"]["tiny-bart"]), prompts, "lora")["fingerprint"] != fp
    harmless = _with(spec, generation={"num_beams": 4}, train={"logging_steps": 7})
    assert compute_fingerprint(harmless, base, prompts, "lora")["fingerprint"] == fp


def test_lora_alpha_stays_a_float(env):
    """lora_alpha is a float (kdsum.config.spec.LoraArgs): 0.5 must reach LoraConfig as 0.5, not int 0."""
    from kdsum.training.trainer import lora_config

    cfg = lora_config(_with(_spec(env, "tiny-llama"), lora={"lora_alpha": 0.5, "r": 4}))
    assert cfg.lora_alpha == 0.5 and cfg.r == 4


def test_train_cli_refusals(env, tmp_path, capsys):
    """`kdsum train` refuses, in one line with exit status 2: a built model without --base-dir, and a checkpoint
    directory inside the output directory."""
    from kdsum.cli import main

    spec_path = tmp_path / "spec.json"
    write_text(spec_path, to_json(_spec(env, "tiny-bart")))
    common = ["train", "--spec", str(spec_path), "--prompts-dir", str(env["prompts"]["seq2seq"])]
    for extra, message in [
        (["--out-dir", str(tmp_path / "out"), "--checkpoint-dir", str(tmp_path / "ckpt")], "needs --base-dir"),
        (
            [
                "--base-dir",
                str(env["bases"]["tiny-bart"]),
                "--out-dir",
                str(tmp_path / "out"),
                "--checkpoint-dir",
                str(tmp_path / "out" / "ckpt"),
            ],
            "must lie outside --out-dir",
        ),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(common + extra)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and message in err, err
        assert not (tmp_path / "out").exists()


def _fake_checkpoint(ckpt: Path, step: int) -> None:
    """A small checkpoint with the files a complete one has (kdsum.training.checkpoints.checkpoint_problem)."""
    from safetensors.torch import save_file

    d = ckpt / f"checkpoint-{step}"
    d.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(d / "adapter_model.safetensors"))
    torch.save(
        {"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}, d / "optimizer.pt"
    )
    torch.save({"last_epoch": step}, d / "scheduler.pt")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))


def test_fingerprint_change_discards_stale_checkpoints(env, tmp_path):
    base, prompts = str(env["bases"]["tiny-llama"]), env["prompts"]["causal"]
    spec = _spec(env, "tiny-llama", max_steps=2, save_steps=1000)
    ckpt = tmp_path / "ckpt"
    old = _with(spec, train={"learning_rate": 1e-4})
    old_fp = compute_fingerprint(old, base, prompts, "lora")
    # same fingerprint: the newest complete checkpoint is picked (a partial newer one is dropped)
    prepare_checkpoint_dir(ckpt, old_fp)
    _fake_checkpoint(ckpt, 3)
    _fake_checkpoint(ckpt, 5)
    (ckpt / "checkpoint-7").mkdir()  # killed while saving: no trainer_state.json
    assert prepare_checkpoint_dir(ckpt, old_fp) == str(ckpt / "checkpoint-5")
    assert not (ckpt / "checkpoint-7").exists()
    # other settings: nothing is resumed and the stale checkpoints are gone
    metrics = train(spec, base, prompts, tmp_path / "out", ckpt, keep_checkpoints=True, progress=False)
    assert metrics["resumed_from_step"] is None and metrics["steps"] == 2
    assert not (ckpt / "checkpoint-5").exists() and not (ckpt / "checkpoint-3").exists()
    assert read_json(ckpt / FINGERPRINT_FILE)["fingerprint"] == metrics["fingerprint"] != old_fp["fingerprint"]
    # seeded: the same job again (fresh checkpoint dir) gives the same losses and the same adapter
    again = train(spec, base, prompts, tmp_path / "out2", tmp_path / "ckpt2", progress=False)
    assert (again["first_loss"], again["final_loss"]) == (metrics["first_loss"], metrics["final_loss"])
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").read_bytes() == (
        tmp_path / "out2" / "model" / "adapter_model.safetensors"
    ).read_bytes()


# --------------------------------------------------------------------------------------------- 6. packing, masking
@pytest.fixture(scope="module")
def four_examples(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("four")
    write_jsonl(d / "train.jsonl", read_jsonl(env["prompts"]["causal"] / "train.jsonl")[:4])
    write_json(d / "special_tokens.json", read_json(env["prompts"]["causal"] / "special_tokens.json"))
    return d


def _sft_trainer(env, prompts, tmp_path, **train_overrides):
    # dropout patterns depend on the layout; the comparison needs none
    spec = _with(_spec(env, "tiny-llama", **train_overrides), lora={"lora_dropout": 0.0})
    trainer, _ = build_trainer(spec, str(env["bases"]["tiny-llama"]), prompts, tmp_path, progress=False)
    return trainer


def test_packing_matches_unpacked(env, four_examples, tmp_path):
    """Padding-free packed batches (position_ids restart per sequence, no attention mask) get a block-diagonal
    causal mask in transformers 5.23 on SDPA/eager: training on the same 4 examples, packed into one row or padded
    into a batch of 4, gives the same losses step by step."""
    common = dict(max_steps=3, logging_steps=1, warmup_steps=0, learning_rate=5e-3, max_length=2048)
    unpacked = _sft_trainer(env, four_examples, tmp_path / "u", per_device_train_batch_size=4, packing=False, **common)
    packed = _sft_trainer(env, four_examples, tmp_path / "p", per_device_train_batch_size=1, packing=True, **common)
    assert len(packed.train_dataset) == 1 and len(packed.train_dataset[0]["seq_lengths"]) == 4

    batch = next(iter(packed.get_train_dataloader()))
    assert "attention_mask" not in batch and (batch["position_ids"] == 0).sum() == 4
    model = packed.model
    with torch.no_grad():
        model.eval()
        good = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}, use_cache=False).loss
        # negative control: with a KV cache the packed-sequence detection is skipped, so the sequences attend to
        # each other and the loss changes. This is what the test would see if masking were wrong.
        leaky = model(**{k: batch[k] for k in ("input_ids", "position_ids", "labels")}, use_cache=True).loss
        model.train()
    assert abs(good.item() - leaky.item()) > 1e-3

    unpacked.train()
    packed.train()
    lu, lp = _losses(unpacked.state.log_history), _losses(packed.state.log_history)
    assert len(lu) == len(lp) == 3
    assert lu == pytest.approx(lp, rel=1e-4, abs=1e-4), (lu, lp)
    assert good.item() == pytest.approx(lu[0], rel=1e-4)


def test_folded_accumulation_trains_like_accumulation(env, four_examples, tmp_path):
    """What train.fold_accumulation relies on (kdsum.gpu.preflight.fold_accumulation): 2 micro-batches of 2 accumulated
    and one micro-batch of 4 give the same optimizer steps, since the loss is normalised by the tokens of the whole
    accumulated batch. Negative control: accumulation 1 with micro-batches of 2 (twice the steps) does not."""
    common = dict(max_steps=3, logging_steps=1, warmup_steps=0, learning_rate=5e-3, max_length=2048)
    runs = {
        name: _sft_trainer(
            env,
            four_examples,
            tmp_path / name,
            per_device_train_batch_size=mb,
            gradient_accumulation_steps=acc,
            fold_accumulation=False,  # each run as written, on a GPU too (the comparison is what folding relies on)
            **common,
        )
        for name, mb, acc in (("accumulated", 2, 2), ("folded", 4, 1), ("halved", 2, 1))
    }
    weights = {}
    for name, trainer in runs.items():
        trainer.train()
        weights[name] = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
    assert weights["accumulated"].keys() == weights["folded"].keys() and weights["folded"]
    for k, w in weights["folded"].items():
        same = (weights["accumulated"][k] - w).abs().max().item()
        control = (weights["halved"][k] - w).abs().max().item()
        # float summation order, amplified where Adam divides a near-zero gradient by its own root: ~1e-5 of
        # updates of lr 5e-3; a different batch moves every weight by ~1e-2
        assert same < 1e-4 and same < control / 100, (k, same, control)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs CUDA"),
            ],
        ),
    ],
)
def test_varlen_attention_matches_separate_sequences(device):
    """kdsum.gpu.attention's varlen path (CPU reference, the flash kernel on CUDA) gives each packed sequence the
    logits it gets alone; a row read as one long sequence (positions 0..T-1) does not."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kdsum.gpu.attention import set_attention

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=300,
        max_position_embeddings=512,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()
    tol = 3e-2 if device == "cuda" else 1e-5  # bf16 rounding on the GPU
    lens = [17, 40, 5, 23]
    seqs = [torch.randint(0, 300, (n,), device=device) for n in lens]
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n, device=device) for n in lens])[None]
    with torch.no_grad():
        assert set_attention(model, "sdpa") == "sdpa"
        alone = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])
        assert set_attention(model, "varlen") == "kdsum_varlen"
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
        one_long = model(
            input_ids=ids, position_ids=torch.arange(ids.shape[1], device=device)[None], use_cache=False
        ).logits[0]
        mask = torch.ones(1, lens[1], dtype=torch.long, device=device)
        padded = model(input_ids=seqs[1][None], attention_mask=mask).logits[0]
    alone, packed, one_long, padded = (x.float() for x in (alone, packed, one_long, padded))
    assert torch.allclose(packed, alone, atol=tol), (packed - alone).abs().max()
    assert (one_long - alone).abs().max() > max(10 * (packed - alone).abs().max(), 1e-3)
    start = sum(lens[:1])
    assert torch.allclose(padded, alone[start : start + lens[1]], atol=tol)  # masked batches: SDPA fallback


def test_varlen_packed_training_matches_unpacked(env, four_examples, tmp_path, monkeypatch):
    """train.attention: varlen through build_trainer: the packed run's losses equal the padded SDPA run's, and the
    varlen kernel (not the SDPA fallback) computed them."""
    import kdsum.gpu.attention as attention

    calls = []
    real = attention._flash_varlen
    monkeypatch.setattr(attention, "_flash_varlen", lambda *a, **k: calls.append(a[3].numel()) or real(*a, **k))
    common = dict(max_steps=3, logging_steps=1, warmup_steps=0, learning_rate=5e-3, max_length=2048)
    unpacked = _sft_trainer(
        env, four_examples, tmp_path / "u", per_device_train_batch_size=4, packing=False, attention="sdpa", **common
    )
    packed = _sft_trainer(
        env, four_examples, tmp_path / "p", per_device_train_batch_size=1, packing=True, attention="varlen", **common
    )
    assert packed.model.config._attn_implementation == "kdsum_varlen"
    assert unpacked.model.config._attn_implementation == "sdpa"
    unpacked.train()
    packed.train()
    lu, lp = _losses(unpacked.state.log_history), _losses(packed.state.log_history)
    assert len(lu) == len(lp) == 3
    assert lu == pytest.approx(lp, rel=1e-4, abs=1e-4), (lu, lp)
    layers = packed.model.config.num_hidden_layers
    assert len(calls) >= 3 * layers and set(calls) == {5}  # every layer of every step, 4 sequences per row


def test_attention_auto_resolution(env):
    from kdsum.gpu.attention import resolve_attention

    packed = _spec(env, "tiny-llama", packing=True, attention="auto")
    expected = "varlen" if torch.cuda.is_available() else "sdpa"
    assert resolve_attention(packed) == expected
    assert resolve_attention(_spec(env, "tiny-llama", packing=False, attention="auto")) == "sdpa"
    assert resolve_attention(_spec(env, "tiny-bart", packing=True, attention="auto")) == "sdpa"
    assert resolve_attention(_spec(env, "tiny-llama", attention="eager")) == "eager"
    with pytest.raises(ValueError, match="train.attention"):
        resolve_attention(_spec(env, "tiny-llama", attention="flash"))


def test_completion_only_loss_masks_the_prompt(env, four_examples, tmp_path):
    trainer = _sft_trainer(env, four_examples, tmp_path, per_device_train_batch_size=4, packing=False, max_steps=1)
    tok = trainer.processing_class
    examples = []
    for r in read_jsonl(four_examples / "train.jsonl"):
        prompt = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=True)["input_ids"]
        full = tok.apply_chat_template(r["prompt"] + r["completion"], return_dict=True)["input_ids"]
        assert full[: len(prompt)] == prompt
        examples.append((prompt, full))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["labels"].shape == batch["input_ids"].shape
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    seen = 0
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
        prompt, full = next((p, f) for p, f in examples if ids[: len(f)] == f)
        seen += 1
        p, n = len(prompt), len(full)
        assert all(x == -100 for x in labels[:p])  # every prompt token is masked
        assert labels[p:n] == full[p:]  # every completion token is trained
        assert all(x == -100 for x in labels[n:])  # padding is masked
        assert im_end in labels[p:n]  # the end of turn is learned: generation stops
        completion = tok.decode(labels[p:n], skip_special_tokens=True).strip()
        assert completion and completion[:5] in tok.decode(full[p:], skip_special_tokens=True)
    assert seen == 4


# --------------------------------------------------------------------------------------------- 7. GPU QLoRA
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU (bitsandbytes 4-bit); none here")
def test_qlora_on_gpu_small_random_llama(env, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = load_tokenizer(str(env["bases"]["tiny-llama"]), "tiny-llama", "causal")
    cfg = LlamaConfig(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        vocab_size=len(tok),
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(base)
    tok.save_pretrained(base)
    spec = _with(
        _spec(env, "tiny-llama", max_steps=10, learning_rate=2e-3, gradient_checkpointing=True),
        method="qlora",
        build=None,
        source=str(base),
    )
    metrics = train(spec, str(base), env["prompts"]["causal"], tmp_path / "out", tmp_path / "ckpt", progress=False)
    assert metrics["method_effective"] == "qlora" and metrics["warnings"] == []
    assert metrics["memory_device"].startswith("cuda:") and metrics["peak_memory_gb"] > 0
    assert metrics["final_loss"] < metrics["first_loss"]
    lm = load_for_generation(spec, model_dir=tmp_path / "out" / "model")
    assert not lm.merged  # a 4-bit base keeps its adapter separate
    model = lm.model
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.__class__.__name__ == "Params4bit"


# --------------------------------------------------------------------------------------------- 8. hostile input
class _CaptureDataset:
    """A callback that keeps what the Trainer trains on: its prepared dataset (token ids and labels)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Capture(TrainerCallback):
            dataset = None

            def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
                self.dataset = train_dataloader.dataset

        return Capture()


def _tok_ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _repeat_to(text: str, tok, tokens: int, sep: str = "\n") -> str:
    """``text`` repeated (joined by ``sep``) until it is at least ``tokens`` tokens long."""
    out = text
    while len(_tok_ids(tok, out)) < tokens:
        out = out + sep + text
    return out


def _with_conversation(row: dict, conversation: str) -> dict:
    from kdsum.models.fitting import split_user_message

    row = json.loads(json.dumps(row))
    user = next(m for m in row["prompt"] if m["role"] == "user")
    head, _, tail = split_user_message(user["content"])
    user["content"] = head + conversation + tail
    return row


def _prompt_dir(root: Path, rows: list[dict], env, family: str) -> Path:
    d = root / f"prompts-{family}"
    write_jsonl(d / "train.jsonl", rows)
    write_json(d / "special_tokens.json", read_json(env["prompts"][family] / "special_tokens.json"))
    return d


def test_long_chat_rows_cut_the_conversation_never_the_summary(env, tmp_path):
    """A dialogue of 5x max_length tokens: trained (through train(), TRL's SFTTrainer) on the prompt prediction gives
    it, its conversation cut, the whole summary and end of turn in the labels; a row whose summary alone exceeds
    max_length is dropped; both counted in train_metrics.json, with warnings."""
    from transformers import AutoModelForCausalLM

    from kdsum.models.fitting import chat_prompt_text, chat_text, encode_rows, input_budget, split_user_message

    base = env["bases"]["tiny-llama"]
    tok = load_tokenizer(str(base), "tiny-llama", "causal")
    spec = _spec(env, "tiny-llama", max_steps=1, per_device_train_batch_size=2)
    max_length = spec.train.max_length
    rows = read_jsonl(env["prompts"]["causal"] / "train.jsonl")[:5]
    user = next(m for m in rows[0]["prompt"] if m["role"] == "user")["content"]
    long_row = _with_conversation(rows[0], _repeat_to(split_user_message(user)[1], tok, 5 * max_length))
    long_row["fname"] = "long"
    assert len(_tok_ids(tok, chat_prompt_text(tok, long_row["prompt"]))) >= 5 * max_length
    wordy = json.loads(json.dumps(rows[4]))
    wordy["fname"] = "wordy"
    wordy["completion"][0]["content"] = _repeat_to(wordy["completion"][0]["content"], tok, max_length + 1, " ")
    prompts = _prompt_dir(tmp_path, [long_row, *rows[1:4], wordy], env, "causal")

    capture = _CaptureDataset()
    out = tmp_path / "out"
    metrics = train(spec, str(base), prompts, out, tmp_path / "ckpt", progress=False, callbacks=[capture])
    saved = read_json(out / "train_metrics.json")
    assert saved == json.loads(json.dumps(metrics))
    assert (saved["rows_total"], saved["rows_trained"], saved["rows_cut"], saved["rows_dropped"]) == (5, 4, 1, 1)
    assert saved["targets_cut"] == 0 and saved["input_budget"] == max_length - spec.generation.max_new_tokens
    assert len(saved["warnings"]) == 2, saved["warnings"]
    assert "1 of 5 training rows had their conversation cut" in saved["warnings"][0]
    assert "1 of 5 training rows dropped" in saved["warnings"][1] and "wordy" in saved["warnings"][1]

    trained = capture.dataset
    assert len(trained) == 4 and all(len(ex["input_ids"]) <= max_length for ex in trained)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    summary = long_row["completion"][0]["content"]
    full = _tok_ids(tok, chat_text(tok, long_row["prompt"] + long_row["completion"]))
    whole_prompt = _tok_ids(tok, chat_prompt_text(tok, long_row["prompt"]))
    assert full[: len(whole_prompt)] == whole_prompt
    completion = full[len(whole_prompt) :]  # the summary and the end of turn, as the uncut row renders them
    long_ex = [ex for ex in trained if ex["labels"][-len(completion) :] == completion]
    assert len(long_ex) == 1
    ids, labels = long_ex[0]["input_ids"], long_ex[0]["labels"]
    n_prompt = next(i for i, x in enumerate(labels) if x != -100)
    assert labels[n_prompt:] == ids[n_prompt:] == completion  # every summary token trained, none cut
    assert all(x == -100 for x in labels[:n_prompt]) and im_end in completion[-2:]
    assert "".join(tok.decode(completion, skip_special_tokens=True).split()) == "".join(summary.split())
    # the conversation was cut, not its beginning, the question or the assistant header
    assert n_prompt <= saved["input_budget"] and ids[:40] == whole_prompt[:40]
    assert ids[n_prompt - 20 : n_prompt] == whole_prompt[-20:]
    assert tok.decode(ids[:n_prompt]).endswith("주세요.<|im_end|>\n<|im_start|>assistant\n")

    # prediction's prompt for that row is exactly the prompt it was trained on
    model = AutoModelForCausalLM.from_pretrained(base)
    (predicted,), n_cut = encode_rows([long_row], tok, "causal", input_budget(spec, model))
    assert n_cut == 1 and predicted == ids[:n_prompt]
    # rows that fit are trained as they are
    for row in rows[1:4]:
        whole = _tok_ids(tok, chat_text(tok, row["prompt"] + row["completion"]))
        assert any(ex["input_ids"] == whole for ex in trained)


def test_long_seq2seq_rows_cut_source_and_target_separately(env, tmp_path):
    """seq2seq: a 5x max_length dialogue is cut to max_length exactly as prediction cuts it, a long summary to
    max_target_length (counted apart), a row without a summary dropped."""
    from transformers import AutoModelForSeq2SeqLM

    from kdsum.models.fitting import encode_rows, encode_seq2seq, input_budget

    base = env["bases"]["tiny-bart"]
    tok = load_tokenizer(str(base), "tiny-bart", "seq2seq")
    spec = _spec(env, "tiny-bart", max_steps=1, per_device_train_batch_size=2)
    max_length, max_target = spec.train.max_length, spec.train.max_target_length
    rows = [dict(r) for r in read_jsonl(env["prompts"]["seq2seq"] / "train.jsonl")[:5]]
    rows[0]["source"] = _repeat_to(rows[0]["source"], tok, 5 * max_length)
    rows[1]["target"] = _repeat_to(rows[1]["target"], tok, 2 * max_target, " ")
    rows[4]["target"] = ""
    prompts = _prompt_dir(tmp_path, rows, env, "seq2seq")

    capture = _CaptureDataset()
    metrics = train(spec, str(base), prompts, tmp_path / "out", tmp_path / "ckpt", progress=False, callbacks=[capture])
    assert (metrics["rows_total"], metrics["rows_cut"], metrics["targets_cut"], metrics["rows_dropped"]) == (5, 1, 1, 1)
    assert read_json(tmp_path / "out" / "train_metrics.json")["warnings"] == metrics["warnings"]
    assert len(metrics["warnings"]) == 3 and "1 of 5 training dialogues longer than" in metrics["warnings"][0]
    assert "training summaries longer than" in metrics["warnings"][1]
    trained = capture.dataset
    assert len(trained) == 4
    model = AutoModelForSeq2SeqLM.from_pretrained(base)
    (predicted,), n_cut = encode_rows(rows[:1], tok, "seq2seq", input_budget(spec, model))
    assert n_cut == 1 and len(predicted) == max_length and predicted[-1] == tok.eos_token_id
    assert trained[0]["input_ids"] == predicted  # the same cut as at prediction
    assert trained[0]["labels"] == encode_seq2seq(tok, rows[0]["target"], 10**6)  # its summary whole
    assert len(trained[1]["labels"]) == max_target and trained[1]["labels"][-1] == tok.eos_token_id
    assert trained[1]["input_ids"] == encode_seq2seq(tok, rows[1]["source"], 10**6)


def _fill_decoy(d: Path) -> dict:
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("keep me")
    (d / "sub" / "data.bin").write_bytes(os.urandom(256))
    (d / "trainer_state.json").write_text("{}")
    return _snapshot(d)


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _cli(capsys, *args) -> tuple[int, str]:
    from kdsum.cli import main

    capsys.readouterr()
    try:
        main(["train", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_train_never_deletes_foreign_directories(env, tmp_path, monkeypatch, capsys):
    """Decoy directories full of files survive a run that fails on its settings (after loading) and a run given
    them outside ./results; refusals are one line, exit 2, before anything is written."""
    monkeypatch.chdir(tmp_path)
    spec_path = tmp_path / "spec.json"
    write_text(spec_path, to_json(_spec(env, "tiny-llama", max_steps=1)))
    common = ["--spec", spec_path, "--base-dir", env["bases"]["tiny-llama"], "--no-progress"]
    in_out = tmp_path / "results" / "train" / "tiny-llama" / "default"
    in_ckpt = tmp_path / "results" / "checkpoints" / "tiny-llama" / "default"
    decoys = {d: _fill_decoy(d) for d in (in_out, in_ckpt, tmp_path / "decoy-out", tmp_path / "decoy-ckpt")}

    # a bad setting found while loading (the seq2seq prompt set for a chat model): nothing deleted, in the tree or not
    bad = ["--prompts-dir", env["prompts"]["seq2seq"], "--out-dir", in_out, "--checkpoint-dir", in_ckpt]
    code, err = _cli(capsys, *common, *bad)
    last = err.strip().splitlines()[-1]  # after the weights' loading bar
    assert code == 2 and last.startswith("error: ") and "expected chat prompt/completion rows" in last, err

    # outside ./results and not the pipeline's: refused instead of deleted
    causal = ["--prompts-dir", env["prompts"]["causal"]]
    link = tmp_path / "results" / "train" / "link"
    link.symlink_to(tmp_path / "decoy-out", target_is_directory=True)
    for out, ckpt, refused in [
        (tmp_path / "decoy-out", tmp_path / "new-ckpt", "--out-dir"),
        (tmp_path / "new-out", tmp_path / "decoy-ckpt", "--checkpoint-dir"),
        (link, tmp_path / "new-ckpt", "--out-dir"),  # under ./results by name only: resolved, it is the decoy
    ]:
        code, err = _cli(capsys, *common, *causal, "--out-dir", out, "--checkpoint-dir", ckpt)
        assert code == 2 and err.startswith("error: ") and "refusing to delete it" in err, err
        assert err.count("\n") == 1 and f"{refused} {out if refused == '--out-dir' else ckpt} exists" in err
    # a directory holding the job's inputs or the working directory is never an output
    elsewhere = tmp_path.parent / f"{tmp_path.name}-new-ckpt"
    for out in (tmp_path, env["prompts"]["causal"].parent):
        code, err = _cli(capsys, *common, *causal, "--out-dir", out, "--checkpoint-dir", elsewhere)
        assert code == 2 and "it would be deleted" in err, err
    assert not elsewhere.exists()

    assert {d: _snapshot(d) for d in decoys} == decoys
    assert not (tmp_path / "new-out").exists() and not (tmp_path / "new-ckpt").exists()
    assert link.is_symlink()


def test_truncated_optimizer_checkpoint_is_skipped(env, tmp_path, caplog):
    """A real run's last checkpoint with a truncated optimizer.pt: the rerun removes it (with a log line), resumes
    from the checkpoint before it, and ends where the uninterrupted run ended."""
    base, prompts = str(env["bases"]["tiny-llama"]), env["prompts"]["causal"]
    spec = _spec(env, "tiny-llama", max_steps=4, save_steps=2, save_total_limit=3, per_device_train_batch_size=2)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    first = train(spec, base, prompts, out, ckpt, keep_checkpoints=True, progress=False)
    last = ckpt / "checkpoint-4"
    assert last_complete_checkpoint(ckpt) == str(last) and checkpoint_problem(ckpt / "checkpoint-2") is None
    optimizer = last / "optimizer.pt"
    data = optimizer.read_bytes()
    optimizer.write_bytes(data[: len(data) // 2])
    assert "optimizer.pt" in checkpoint_problem(last)
    assert last_complete_checkpoint(ckpt) == str(ckpt / "checkpoint-2")

    first_losses = [float(r["loss"]) for r in _read_log(out / "log_history.csv") if r["loss"]]
    caplog.set_level(logging.WARNING, logger="kdsum.training.checkpoints")
    # out/ lies outside ./results but holds the first run's train_metrics.json: the pipeline's own, replaced
    again = train(spec, base, prompts, out, ckpt, keep_checkpoints=True, progress=False)
    assert f"removing incomplete checkpoint {last}" in caplog.text and "optimizer.pt" in caplog.text
    assert again["resumed_from_step"] == 2 and again["steps"] == 4 and first["steps"] == 4
    again_losses = [float(r["loss"]) for r in _read_log(out / "log_history.csv") if r["loss"]]
    assert len(again_losses) == 4 and again_losses == pytest.approx(first_losses, rel=1e-4)  # an exact resume
    assert checkpoint_problem(last) is None  # saved again, whole

    # the other files are checked by their loaders too
    weights = ckpt / "checkpoint-2" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    assert "adapter_model.safetensors" in checkpoint_problem(ckpt / "checkpoint-2")
    state = last / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    assert "trainer_state.json" in checkpoint_problem(last)
    assert last_complete_checkpoint(ckpt) is None


def test_local_source_that_is_no_model_is_refused_first(env, tmp_path, monkeypatch, capsys):
    """`source: /etc` (a directory that is no model), a directory without a tokenizer, a missing path: one line
    naming models.<name>.source, before anything is read or deleted."""
    monkeypatch.chdir(tmp_path)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((env["bases"]["tiny-llama"] / "config.json").read_text())
    out = tmp_path / "results" / "train" / "llama-ko-3b" / "default"
    ckpt = tmp_path / "results" / "checkpoints" / "llama-ko-3b" / "default"
    decoys = {d: _fill_decoy(d) for d in (out, ckpt)}
    for source, message in [
        ("/etc", "models.llama-ko-3b.source: '/etc' is a local directory without config.json"),
        (str(no_tokenizer), f"models.llama-ko-3b.source: '{no_tokenizer}' is a local directory without a tokenizer"),
        ("/nonexistent/models/x", "models.llama-ko-3b.source: '/nonexistent/models/x' does not exist"),
    ]:
        spec_path = tmp_path / "spec.json"
        write_text(spec_path, to_json(_with(_spec(env, "llama-ko-3b"), source=source)))
        args = ["--spec", spec_path, "--prompts-dir", env["prompts"]["causal"], "--out-dir", out]
        code, err = _cli(capsys, *args, "--checkpoint-dir", ckpt)
        assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert {d: _snapshot(d) for d in decoys} == decoys


def test_kernels_resolution_and_refusals(env):
    """train.kernels: auto takes Liger only on CUDA with liger-kernel installed; liger refuses, in one line, where
    it cannot run; the memory planner counts what Liger's norms and SwiGLU do not keep."""
    from kdsum.gpu.kernels import KernelError, liger_model_types, resolve_kernels
    from kdsum.gpu.memory import estimate_peak_memory
    from kdsum.models.replicas import SEEDS

    llama = _spec(env, "tiny-llama", kernels="auto")
    assert resolve_kernels(llama, "llama", cuda=False) == "none"
    assert resolve_kernels(_spec(env, "tiny-llama", kernels="none"), "llama", cuda=True) == "none"
    assert resolve_kernels(_spec(env, "tiny-bart", kernels="auto"), "bart", cuda=True) == "none"
    installed = liger_model_types() is not None
    assert resolve_kernels(llama, "llama", cuda=True) == ("liger" if installed else "none")
    liger = _spec(env, "tiny-llama", kernels="liger")
    with pytest.raises(KernelError, match="train.kernels: liger needs a CUDA GPU"):
        resolve_kernels(liger, "llama", cuda=False)
    with pytest.raises(KernelError, match="decoder-only"):
        resolve_kernels(_spec(env, "tiny-bart", kernels="liger"), "bart", cuda=True)
    with pytest.raises(KernelError, match="must be one of"):
        resolve_kernels(_spec(env, "tiny-llama", kernels="triton"), "llama", cuda=False)
    if not installed:
        with pytest.raises(KernelError, match="not installed"):
            resolve_kernels(liger, "llama", cuda=True)
    cfg = dict(SEEDS["llama-3.2-3b"].config)
    plain, fused = (
        estimate_peak_memory(cfg, "lora", 8, 1024, False, True, attention="varlen", kernels=k)
        for k in ("none", "liger")
    )
    h, i, layers, tokens = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], 8 * 1024
    saved = (2 * 2 * h + 2 * i) * layers * tokens / 2**30  # two bf16 norm inputs instead of fp32, no SiLU output
    assert plain["parts"]["activations"] - fused["parts"]["activations"] == pytest.approx(saved, abs=0.01)


def _liger_parts(model) -> set[str]:
    """Liger's patches in a model: it renames SwiGLU modules and binds its own forward to RMSNorm ones."""
    parts = {m._get_name() for m in model.modules() if m._get_name().startswith("Liger")}
    bound = (getattr(m.__dict__.get("forward"), "__qualname__", "") for m in model.modules())
    return parts | {q.split(".")[0] for q in bound if q.startswith("Liger")}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger's Triton kernels need a CUDA GPU")
def test_liger_kernels_and_compile_keep_the_losses(env, four_examples, tmp_path):
    """The same job plain, with train.kernels: liger, and with liger and compiled decoder layers: per-step losses
    equal within bf16 noise, and Liger's modules and the compiled layers are really in the model."""
    pytest.importorskip("liger_kernel")
    common = dict(max_steps=4, logging_steps=1, warmup_steps=0, learning_rate=5e-3, packing=True, bf16=True)
    runs = {}
    for kernels, compiled in (("none", False), ("liger", False), ("liger", True)):
        key = f"{kernels}-{compiled}"
        trainer = _sft_trainer(env, four_examples, tmp_path / key, kernels=kernels, compile=compiled, **common)
        trainer.train()
        runs[key] = (_losses(trainer.state.log_history), trainer)
    assert {"LigerSwiGLUMLP", "LigerRMSNorm"} <= _liger_parts(runs["liger-False"][1].model)
    assert not _liger_parts(runs["none-False"][1].model)
    compiled = [m for m in runs["liger-True"][1].model.modules() if getattr(m, "_compiled_call_impl", None)]
    assert len(compiled) == runs["liger-True"][1].model.config.num_hidden_layers
    plain = runs["none-False"][0]
    assert len(plain) == 4
    for key in ("liger-False", "liger-True"):
        assert runs[key][0] == pytest.approx(plain, rel=2e-2), (key, runs[key][0], plain)


def test_lora_branches_keep_their_bf16_inputs_under_autocast(monkeypatch):
    """kdsum.gpu.kernels.keep_adapter_inputs_16bit: under bf16 autocast each LoRA branch's lora_A gets the layer's bf16
    input instead of PEFT's float32 copy, and the outputs stay those of PEFT's own path (autocast rounds that copy
    back to bf16 for the matmul)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kdsum.gpu import kernels

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    base = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    with torch.no_grad():  # non-zero B, so the branches change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_pre_hook(lambda _m, a: seen.append(a[0].dtype))
             for n, m in model.named_modules() if n.endswith("lora_A.default")]  # fmt: skip
    ids = torch.randint(0, 64, (2, 9))

    def run():
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids).logits.float(), set(seen)

    peft_logits, peft_dtypes = run()
    monkeypatch.setattr(kernels, "ADAPTER_INPUT_CAST", True)
    assert kernels.keep_adapter_inputs_16bit(model) == 0  # the A/B switch leaves PEFT's casts on
    monkeypatch.setattr(kernels, "ADAPTER_INPUT_CAST", False)
    assert kernels.keep_adapter_inputs_16bit(model) == 7  # q, k, v, o, gate, up, down
    ours, our_dtypes = run()
    for h in hooks:
        h.remove()
    assert peft_dtypes == {torch.float32} and our_dtypes == {torch.bfloat16}
    assert torch.equal(ours, peft_logits)
