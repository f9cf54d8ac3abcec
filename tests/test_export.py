"""`kdsum export` (kdsum.generation.export): a fine-tuned system as one self-contained model directory.

The exported directory is loaded in a fresh interpreter where peft and kdsum cannot be imported, by plain
transformers (``from_pretrained``, the saved chat template and generation config), and its greedy summaries must
equal those the pipeline's `kdsum predict` wrote for the same rows (a LoRA system on the tiny Llama of
test_generation); a fully fine-tuned seq2seq model (tiny BART) exports and loads the same way.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from test_generation import (  # noqa: F401  (session fixtures)
    ENV,
    call_kdsum,
    causal_base,
    config,
    seq2seq_base,
    spec_path,
    work,
)

from kdsum.io import read_jsonl

torch.set_num_threads(1)
ROWS = 6  # dev rows compared (the tiny models generate 6 new tokens each: TEST_GENERATION)

# Plain transformers on the exported directory: no peft, no kdsum (both made unimportable).
STANDALONE = r"""
import json, sys
sys.modules["peft"] = None
sys.modules["kdsum"] = None
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
out_dir, family, rows = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
auto = AutoModelForCausalLM if family == "causal" else AutoModelForSeq2SeqLM
model, tok = auto.from_pretrained(out_dir).eval(), AutoTokenizer.from_pretrained(out_dir)
texts = []
for row in rows:
    if family == "causal":
        ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, enable_thinking=False,
                                      return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tok(row["source"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids))
    new = out[0, ids.shape[1]:] if family == "causal" else out[0]
    texts.append(" ".join(tok.decode(new, skip_special_tokens=True).split()))
print(json.dumps({"texts": texts, "peft": "peft" in sys.modules and sys.modules["peft"] is not None}))
"""


@pytest.fixture(scope="module")
def lora_dir(work, causal_base):  # noqa: F811
    """A LoRA adapter on the tiny Llama whose (scaled-up) random weights make the summaries depend on the prompt:
    the random base alone writes the same newline after every prompt."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = work / "train" / "tiny-llama" / "export" / "model"
    targets = ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"]
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(causal_base),
        LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False),
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(8.0)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(causal_base).save_pretrained(out)
    return out


def _standalone(out_dir, family: str, rows: list[dict]) -> dict:
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(out_dir), family],
        input=json.dumps(rows, ensure_ascii=False),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _predict_and_export(capsys, work, model: str, prompts: str, weights: list[str]):  # noqa: F811
    preds, out = work / "export-pred" / model / "dev.csv", work / "export" / model / "default"
    spec = spec_path(work, model, "default")
    prompts_dir = work / "prompts" / prompts
    code, _, err = call_kdsum(
        capsys, "predict", "--spec", spec, "--split", "dev", "--prompts-dir", prompts_dir, *weights, "--out", preds
    )
    assert code == 0, err
    code, _, err = call_kdsum(capsys, "export", "--spec", spec, *weights, "--out", out)
    assert code == 0, err
    rows = read_jsonl(prompts_dir / "dev.jsonl")[:ROWS]
    return pd.read_csv(preds, keep_default_na=False)["summary"].tolist()[:ROWS], out, rows


def test_exported_lora_system_writes_the_pipeline_summaries(work, lora_dir, capsys):  # noqa: F811
    expected, out, rows = _predict_and_export(capsys, work, "tiny-llama", "chat-plain", ["--model-dir", lora_dir])
    info = json.loads((out / "export.json").read_text())
    assert info["load_path"] == "merged" and info["adapter"] == str(lora_dir)
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    saved = json.loads((out / "generation_config.json").read_text())
    assert saved["eos_token_id"] == info["eos_token_id"] and len(info["eos_token_id"]) >= 1
    got = _standalone(out, "causal", rows)
    assert not got["peft"]
    assert got["texts"] == expected and len(set(expected)) > 1


def test_exported_full_seq2seq_system_loads_standalone(work, seq2seq_base, capsys):  # noqa: F811
    """A full fine-tune (seq2seq) exports as it is and loads without kdsum; the random tiny BART writes empty
    summaries, so this checks the loading and the end ids, not the text."""
    expected, out, rows = _predict_and_export(capsys, work, "tiny-bart", "seq2seq", ["--model-dir", seq2seq_base])
    assert json.loads((out / "export.json").read_text())["load_path"] == "full"
    assert _standalone(out, "seq2seq", rows)["texts"] == expected


def test_export_refuses_the_zeroshot_variant(work, causal_base, capsys):  # noqa: F811
    out = work / "export" / "refused"
    spec = spec_path(work, "tiny-llama", "zeroshot")
    code, _, err = call_kdsum(capsys, "export", "--spec", spec, "--model-dir", causal_base, "--out", out)
    assert code == 2 and err.startswith("error: ") and "zero-shot" in err and not out.exists()
