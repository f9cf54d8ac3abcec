"""Training stage: LoRA and full fine-tunes on the offline tiny models, resume after a kill, fingerprints, packing,
completion-only masking, and (on a GPU) QLoRA.

A session fixture builds the tiny base models with a short pretraining (the jobs of config.yaml with test
settings), so the whole module stays around two minutes on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kdsum.checkpoints import FINGERPRINT_FILE, compute_fingerprint, last_complete_checkpoint, prepare_checkpoint_dir
from kdsum.config import load_config, resolve, spec_for
from kdsum.data import ingest_splits, load_split
from kdsum.io import read_json, read_jsonl, write_json, write_jsonl, write_text
from kdsum.modeling import load_for_generation, load_tokenizer
from kdsum.offline_models import build_base_model
from kdsum.prompts import write_prompt_set
from kdsum.spec import to_json
from kdsum.training import build_trainer, train

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
    """Sample data ingested and formatted, tiny bases built with a short pretraining."""
    root = tmp_path_factory.mktemp("training")
    config = load_config(REPO / "config.yaml")
    data = root / "data"
    ingest_splits({s: REPO / "data" / "sample" / f"{s}.csv" for s in ("train", "dev", "test")}, data)
    records = load_split(data / "train.jsonl")
    prompts = {"seq2seq": root / "prompts" / "seq2seq", "causal": root / "prompts" / "chat-plain"}
    for d in prompts.values():
        write_prompt_set(spec_for(config, f"prompts/{d.name}"), data, d)
    tokens = read_json(prompts["causal"] / "special_tokens.json")["tokens"]
    env = {"root": root, "config": config, "prompts": prompts, "bases": {}}
    for name in ("tiny-bart", "tiny-llama"):
        job = _spec(env, name)
        env["bases"][name] = root / "base" / name
        build_base_model(
            job.family, job.build, [r["dialogue"] for r in records], tokens, env["bases"][name], progress=False
        )
    return env


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

    assert sorted(p.name for p in out.iterdir()) == ["log_history.csv", "model", "train_metrics.json"]
    saved = read_json(out / "train_metrics.json")
    assert saved == json.loads(json.dumps(metrics))
    missing = [k for k in METRIC_FIELDS if k not in saved]
    assert not missing, missing
    assert saved["method"] == saved["method_effective"] == "lora" and saved["warnings"] == []
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

    from kdsum.generation import encode_seq2seq

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

    from kdsum.offline_models import train_tokenizer

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
    """lora_alpha is a float (kdsum.spec.LoraArgs): 0.5 must reach LoraConfig as 0.5, not int 0."""
    from kdsum.training import lora_config

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
    d = ckpt / f"checkpoint-{step}"
    d.mkdir(parents=True)
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
    """kdsum.attention's varlen path (CPU reference, the flash kernel on CUDA) gives each packed sequence the
    logits it gets alone; a row read as one long sequence (positions 0..T-1) does not."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from kdsum.attention import set_attention

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
    import kdsum.attention as attention

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
    from kdsum.attention import resolve_attention

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
