"""Export: a fine-tuned system as one self-contained Hugging Face model directory that plain transformers loads
(``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM.from_pretrained``), with no peft and no kdsum.

The model is loaded as prediction loads it (kdsum.models.loading.load_for_generation) with the adapter always merged:
a LoRA adapter into its base, a QLoRA adapter into the dequantized 4-bit base (the weights it learned against).
The directory holds the weights (safetensors, in the prediction's dtype by default: bfloat16 on a bf16 GPU), the
tokenizer with its data tokens, pad token and chat template, and a ``generation_config.json`` with the job's
decoding settings and every end id the pipeline stops at (eos, the template's end of turn, the model's own), so
``model.generate`` on the chat-templated prompt writes the pipeline's greedy summary. ``export.json`` names
where it came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdsum.config.spec import ZERO_SHOT, Job
from kdsum.errors import KdsumError
from kdsum.io import atomic_dir, write_json

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ExportError(KdsumError):
    """A system that cannot be exported (the zero-shot variant, an unknown dtype)."""


def export_generation_config(job: Job, model, tokenizer):
    """The model's generation config with the job's decoding settings and end ids (kdsum.generation.predict)."""
    import copy

    from kdsum.generation.predict import generation_kwargs

    config = copy.deepcopy(model.generation_config)
    for key, value in generation_kwargs(job, tokenizer, model).items():
        setattr(config, key, value)
    return config


def export_system(
    job: Job,
    out: str | Path,
    model_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    dtype: str = "auto",
) -> dict:
    """Write ``job``'s fine-tuned model to ``out`` (whole or not at all); returns what ``export.json`` holds.
    ``dtype``: ``auto`` (the dtype prediction uses, kdsum.models.loading.model_dtype), or one of :data:`DTYPES`."""
    from kdsum.models.loading import load_for_generation

    if job.variant == ZERO_SHOT:
        raise ExportError(f"{job.name}: the zero-shot variant is the base model itself; export a fine-tuned variant")
    if dtype != "auto" and dtype not in DTYPES:
        raise ExportError(f"export dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    loaded = load_for_generation(
        job, model_dir, base_dir, merge_plan=lambda source, vocab: {"merge": True, "reason": "export merges"}
    )
    model = loaded.model if dtype == "auto" else loaded.model.to(DTYPES[dtype])
    if getattr(model.config, "quantization_config", None) is not None:  # dequantized: nothing 4-bit is left
        del model.config.quantization_config
    model.generation_config = export_generation_config(job, model, loaded.tokenizer)
    info = {
        "system": job.name,
        "family": job.family,
        "method": job.method,
        "base": loaded.base,
        "adapter": loaded.adapter,
        "load_path": loaded.load_path,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "eos_token_id": model.generation_config.eos_token_id,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        write_json(Path(tmp) / "export.json", info)
    log.info("exported %s to %s (%s, %s)", job.name, out, info["load_path"], info["dtype"])
    return info
