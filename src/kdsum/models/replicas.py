"""Hub-shaped local replicas of the seed models: a model directory laid out as a hub download would be.

Each replica has the public ``config.json`` numbers of its model, seeded random weights in safetensors, and the
real tokenizer with its chat template where ``../shared/tokenizers`` has it (Llama-3, Qwen3). KoBART's tokenizer
is not available: its replica uses a tokenizer the project trains on the training dialogues (as the offline
models do) and says so in ``replica.json``. ``size="cpu"`` keeps the tokenizer, vocabulary and template and
shrinks the network to two small layers, for CI. ``source:`` pointing at a replica runs exactly the code a hub id
runs (``from_pretrained`` on a directory).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kdsum.errors import KdsumError
from kdsum.io import atomic_dir
from kdsum.models.finite import check_finite_weights


class ReplicaError(KdsumError):
    """A replica that cannot be written as asked."""


@dataclass(frozen=True)
class Seed:
    """A seed model: the hub id it stands for, its public architecture, and where its tokenizer comes from."""

    hub_id: str
    config: dict
    tokenizer: str | None  # a directory name under ../shared/tokenizers; None: the project's own
    note: str = ""
    cpu: dict = field(default_factory=dict)


_CPU_CAUSAL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
)
SEEDS = {
    "kobart-base": Seed(
        hub_id="gogamza/kobart-base-v2",
        config=dict(
            model_type="bart",
            d_model=768,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
            vocab_size=30000,
            max_position_embeddings=1026,
            activation_function="gelu",
            scale_embedding=False,
        ),
        tokenizer=None,
        note="KoBART's tokenizer is not available offline: the project's tokenizer, trained on the training data",
        cpu=dict(
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
        ),
    ),
    "llama-3.2-3b": Seed(
        hub_id="beomi/Llama-3.2-Korean-3B-Instruct",
        config=dict(
            model_type="llama",
            hidden_size=3072,
            num_hidden_layers=28,
            num_attention_heads=24,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=8192,
            vocab_size=128256,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            max_position_embeddings=131072,
            hidden_act="silu",
            rope_theta=500000.0,
            bos_token_id=128000,
            eos_token_id=[128001, 128008, 128009],
            rope_scaling=dict(
                rope_type="llama3",
                factor=32.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
        ),
        tokenizer="llama3",
        cpu=_CPU_CAUSAL,
    ),
    "qwen3-4b": Seed(
        hub_id="Qwen/Qwen3-4B-Instruct-2507",
        config=dict(
            model_type="qwen3",
            hidden_size=2560,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=9728,
            vocab_size=151936,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=262144,
            hidden_act="silu",
            rope_theta=5000000.0,
            bos_token_id=151643,
            eos_token_id=151645,
        ),
        tokenizer="qwen3",
        cpu=_CPU_CAUSAL,
    ),
    "qwen2.5-7b": Seed(
        hub_id="Qwen/Qwen2.5-7B-Instruct",
        config=dict(
            model_type="qwen2",
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            tie_word_embeddings=False,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            hidden_act="silu",
            rope_theta=1000000.0,
            bos_token_id=151643,
            eos_token_id=151645,
        ),
        tokenizer="qwen3",
        note="Qwen2.5's own tokenizer is not available offline: Qwen3's (same byte-level BPE family; its template "
        "differs: no default system prompt, a think block)",
        cpu={k: v for k, v in _CPU_CAUSAL.items() if k != "head_dim"},
    ),
    "llama-3-8b": Seed(
        hub_id="beomi/Llama-3-Open-Ko-8B-Instruct-preview",
        config=dict(
            model_type="llama",
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
            hidden_act="silu",
            rope_theta=500000.0,
            bos_token_id=128000,
            eos_token_id=128009,
        ),
        tokenizer="llama3",
        cpu={k: v for k, v in _CPU_CAUSAL.items() if k != "head_dim"},
    ),
}
SIZES = ("full", "cpu")


def replica_config(name: str, size: str, tokenizer=None):
    """The transformers config of a replica (``size="cpu"``: two small layers, same vocabulary)."""
    from transformers import AutoConfig

    seed = _seed(name)
    if size not in SIZES:
        raise ReplicaError(f"unknown replica size '{size}' (known: {', '.join(SIZES)})")
    values = {**seed.config, **(seed.cpu if size == "cpu" else {})}
    model_type = values.pop("model_type")
    if tokenizer is not None and model_type == "bart":
        values.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
        )
    return AutoConfig.for_model(model_type, **values)


def _seed(name: str) -> Seed:
    if name not in SEEDS:
        raise ReplicaError(f"unknown seed model '{name}' (known: {', '.join(SEEDS)})")
    return SEEDS[name]


def load_replica_tokenizer(name: str, tokenizers_dir: Path, train_texts: list[str] | None = None):
    from transformers import AutoTokenizer

    seed = _seed(name)
    if seed.tokenizer is None:
        if not train_texts:
            raise ReplicaError(f"replica '{name}' trains its tokenizer on the training dialogues: pass --train")
        from kdsum.korean.text import data_tokens
        from kdsum.models.build import train_tokenizer

        tokens = sorted({t for text in train_texts for t in data_tokens(text)})
        return train_tokenizer(train_texts, 8000, tokens, "seq2seq")
    path = Path(tokenizers_dir) / seed.tokenizer
    if not (path / "tokenizer.json").is_file():
        raise ReplicaError(f"the real {seed.tokenizer} tokenizer is not at {path} (../shared/tokenizers)")
    return AutoTokenizer.from_pretrained(str(path))


def write_replica(
    name: str,
    size: str,
    out_dir: str | Path,
    tokenizers_dir: str | Path,
    seed: int = 0,
    train_texts: list[str] | None = None,
    device: str = "auto",
) -> dict:
    """Write the replica directory (config.json, model.safetensors, tokenizer files, replica.json), whole."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_replica_tokenizer(name, Path(tokenizers_dir), train_texts)
    config = replica_config(name, size, tokenizer)
    torch.manual_seed(seed)
    loader = AutoModelForSeq2SeqLM if config.model_type == "bart" else AutoModelForCausalLM
    dtype = torch.bfloat16 if size == "full" else torch.float32
    with torch.device(device):
        model = loader.from_config(config, dtype=dtype)
    info = {
        "seed_model": name,
        "stands_for": _seed(name).hub_id,
        "size": size,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config.vocab_size,
        "tokenizer": _seed(name).tokenizer or "project (trained on the training dialogues)",
        "tokenizer_len": len(tokenizer),
        "note": _seed(name).note,
        "weights": "random (seeded), not trained",
    }
    check_finite_weights(model, f"replica {out_dir}")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if _seed(name).tokenizer is None:
            tokenizer.save_pretrained(tmp)
        else:  # the real tokenizer's files as published, byte for byte (a hub download has them so)
            for f in sorted((Path(tokenizers_dir) / _seed(name).tokenizer).iterdir()):
                if f.is_file():
                    shutil.copyfile(f, Path(tmp) / f.name)
        (Path(tmp) / "replica.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return info
