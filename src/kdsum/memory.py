"""GPU-memory planner for the training stage: estimate a job's peak before loading the model, refuse what cannot fit.

:func:`estimate_peak_memory` adds up, from the model's configuration and the job's settings, what a training step
keeps on the GPU at its peak. Units are GiB (2**30 bytes). ``h`` hidden size, ``q``/``kv`` the query and key/value
projection widths (heads x head_dim), ``i`` the MLP width, ``L`` layers, ``V`` vocabulary, ``T`` tokens in one
micro-batch (``micro_batch x seq_len``: with packing every bin is filled up to ``seq_len``; without it a batch is
padded to its longest row, and ``seq_len`` is that longest row, ``train.max_length`` in the worst case).

* **weights** -- bf16/fp32 parameters; for QLoRA the linear layers in NF4 (0.5 byte per weight, plus one uint8
  absmax per 64 weights and one fp32 per 256 absmax with double quantization, 4 bytes per 64 without), the rest
  (embeddings, untied LM head, norms, biases) in fp32, since ``peft.prepare_model_for_kbit_training`` upcasts every
  parameter that is not 4-bit (the pipeline and the usual QLoRA recipe call it).
* **lora+optimizer** -- the trainable parameters, their gradients and AdamW's two moments: LoRA adapters are fp32
  under plain LoRA (PEFT upcasts them), bf16 under QLoRA (TRL casts them) -- 16 and 8 bytes per adapter parameter;
  ``r x (d_in + d_out)`` per adapted linear, all seven linears of each layer (``all-linear``). A full fine-tune keeps
  fp32 gradients and moments of every parameter (12 bytes each; the fp32 weights are under *weights*).
* **activations** -- what autograd saves, per token and layer (bf16 activations, frozen base weights):
  two RMSNorm fp32 inputs ``8h``; SDPA's q, k, v, output ``2(2q + 2kv)``, with k and v repeated to ``q`` width when
  a mask is passed (padded batches, or packed batches on the SDPA path, where transformers builds a dense
  block-diagonal mask); each LoRA branch keeps its bf16 input copy and, with dropout, a 1-byte mask:
  ``c (5h + q + i)`` with ``c = 3`` (dropout) or ``2``; the MLP's gate, SiLU and up outputs ``6i``; the rank-r
  pieces ``28r``. Without checkpointing all ``L`` layers are kept; with it, each layer's input (2 or, with the
  fp32 upcast of QLoRA, 4 bytes x h) plus one layer recomputed in the backward pass. On top: the backward pass's
  working set of one layer (``8h + 6i`` per token), the model's fp32 final norm and LM-head input (``10h``), and the
  attention masks: ``T_row^2`` bool shared, plus a ``2 T_row^2`` bf16 additive bias that SDPA's memory-efficient
  kernel keeps per layer (``T_row`` = the packed row, i.e. ``T``, or the padded row length).
* **logits** -- ``fused`` (TRL >= 1.x ``SFTTrainer``, the pipeline): per-token log-probabilities from 4096 x 32768
  tiles, never the full ``T x V`` logits (``2 x 4096 x 32768`` bytes plus an fp32 gradient of the LM-head input);
  ``full`` (a plain ``Trainer`` and the model's own loss, the earlier recipe): the bf16 logits, their fp32 copy,
  the log-softmax and its gradient, ``12 T V`` bytes at the start of the backward pass.
* **overhead** -- memory outside PyTorch's allocator (CUDA context, cuBLAS/cuDNN handles: ``CONTEXT_GIB``) plus
  the caching allocator's slack (reserved beyond allocated): ``FULL_LOGITS_SLACK`` x the logits term when full
  logits of varying length are materialised (padded batches: each batch's logits have another size, and the
  freed blocks of earlier sizes stay reserved); with the fused loss ``ALLOCATOR_BASE_GIB`` + ``FRAGMENTATION`` x
  the per-step memory, plus, for QLoRA, the bf16 copy of the fp32-upcast LM head (``2 V h``) made in each forward.
  QLoRA's fp32 norms also make the MLP's (and SDPA's) saved activations fp32 (see ``_layer_bytes_per_token``).

``total_gb`` is what the job needs on the card (peak reserved + memory outside the allocator); ``allocated_gb``
is the part ``torch.cuda.max_memory_allocated`` sees. The constants were calibrated against the H100 runs of
``benchmarks/bench_train.py`` (docs/BENCHMARKS.md, section 3, which lists estimate vs measured and says which
configurations were measured and which terms are priors). :func:`check_fits` compares an estimate with
the card's free memory (``torch.cuda.mem_get_info``) and raises :class:`MemoryPlanError`, naming the job and what
to change, when it cannot fit. :func:`check_spec_fits` does both for a resolved pipeline spec.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping

log = logging.getLogger(__name__)

GIB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float32": 4, "fp32": 4}
METHODS = ("full", "lora", "qlora")
NF4_BLOCK = 64                 # bitsandbytes 4-bit block size (weights per absmax)
NF4_DQ_BLOCK = 256             # absmax values per second-level (fp32) constant with double quantization
FUSED_TOKEN_TILE = 4096        # TRL chunked log-prob: tokens per projection tile
FUSED_VOCAB_TILE = 32768       # TRL chunked log-prob: vocabulary entries per tile
FULL_LOGITS_BYTES = 12         # bytes per (token x vocab entry) with the model's own loss (see module docstring)
CONTEXT_GIB = 1.47             # outside PyTorch's allocator: CUDA context, cuBLAS/cuDNN handles (H100, torch 2.11:
                               # 1.47-1.48 GiB in all six measured runs)
FULL_LOGITS_SLACK = 1.5        # allocator slack with full logits of padded batches of varying length, x the 12 T V
                               # logits term: reserved - allocated was 5.2-5.6 GiB in the four full-logit runs of
                               # 2026-11-21 (3B: 2.0 x, 7B: 1.2 x their logits terms); 1.5 is calibrated on them
ALLOCATOR_BASE_GIB = 1.0       # slack of the fused-loss (pipeline) runs: 1.1-1.8 GiB whatever the activations
FRAGMENTATION = 0.02           # ... growing slowly with the per-step memory (calibrated on the seven pipeline runs)
DEFAULT_MARGIN = 0.05          # check_fits keeps this share of the free memory in reserve


class MemoryPlanError(RuntimeError):
    """A training job whose estimated peak exceeds the GPU's free memory; the message says what to change."""


@dataclass(frozen=True)
class ModelDims:
    """The shape numbers the estimate needs, read from a transformers config (decoder-only models)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def _get(cfg: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def model_dims(model_config: Any, name: str | None = None) -> ModelDims:
    """Read a decoder-only model's dimensions from a ``PretrainedConfig`` (or its ``to_dict()``) or a plain dict."""
    if isinstance(model_config, ModelDims):
        return model_config if name is None else ModelDims(**dict(asdict(model_config), name=name))
    if hasattr(model_config, "get_text_config"):
        model_config = model_config.get_text_config()
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    hidden = _get(cfg, "hidden_size", "n_embd", "d_model")
    layers = _get(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _get(cfg, "num_attention_heads", "n_head")
    if hidden is None or layers is None or heads is None:
        raise ValueError(f"model config {name or cfg.get('_name_or_path') or ''!r} lacks hidden_size / "
                         f"num_hidden_layers / num_attention_heads; the memory planner handles decoder-only models")
    kv_heads = _get(cfg, "num_key_value_heads", default=heads)
    head_dim = _get(cfg, "head_dim", default=hidden // heads)
    intermediate = _get(cfg, "intermediate_size", "n_inner", default=4 * hidden)
    vocab = _get(cfg, "vocab_size")
    tied = bool(_get(cfg, "tie_word_embeddings", default=True))
    qkv_bias = bool(_get(cfg, "attention_bias", default=False)) or cfg.get("model_type") == "qwen2"
    label = name or cfg.get("_name_or_path") or cfg.get("model_type") or "model"
    return ModelDims(str(label), int(hidden), int(layers), int(heads), int(kv_heads), int(head_dim),
                     int(intermediate), int(vocab), tied, qkv_bias)


def parameter_counts(d: ModelDims) -> dict[str, int]:
    """Parameters by kind: ``linear`` (the seven projections of every layer, the ones LoRA adapts and QLoRA
    quantizes), ``embed``, ``lm_head`` (0 when tied), ``other`` (norms, biases) and ``total``."""
    h, q, kv, i = d.hidden, d.q_dim, d.kv_dim, d.intermediate
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    linear = d.layers * per_layer
    other = d.layers * 2 * h + h + (d.layers * (q + 2 * kv) if d.qkv_bias else 0)
    embed = d.vocab * h
    lm_head = 0 if d.tied else d.vocab * h
    return {"linear": linear, "embed": embed, "lm_head": lm_head, "other": other,
            "total": linear + embed + lm_head + other}


def lora_parameter_count(d: ModelDims, r: int) -> int:
    """Adapter parameters of LoRA rank ``r`` on all seven linears of every layer (``target_modules=all-linear``)."""
    h, q, kv, i = d.hidden, d.q_dim, d.kv_dim, d.intermediate
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return d.layers * r * per_layer


def matmul_parameter_count(d: ModelDims) -> int:
    """Weights that take part in a matrix product per token: the layers' linears plus the LM head (the input
    embedding is a lookup). Model FLOPs of a LoRA step ~ 4 x this per token (forward + input gradients)."""
    c = parameter_counts(d)
    return c["linear"] + d.vocab * d.hidden


def _layer_bytes_per_token(d: ModelDims, method: str, lora_r: int, lora_dropout: float, masked: bool,
                           act_bytes: int, fp32_outputs: bool = False, varlen: bool = False) -> float:
    """Bytes that autograd keeps per token for one decoder layer (no checkpointing); see the module docstring.

    ``fp32_outputs``: QLoRA after ``prepare_model_for_kbit_training``: the fp32 norms make every 4-bit linear's
    input fp32 and bitsandbytes returns its output in the input's dtype, so the MLP's saved tensors are fp32, and
    so are SDPA's q/k/v/output (the varlen path casts them to bf16 for the flash kernel, which saves those)."""
    h, q, kv, i, a = d.hidden, d.q_dim, d.kv_dim, d.intermediate, act_bytes
    norms = 2 * 4 * h
    k_w = q if (masked and d.kv_heads != d.heads) else kv
    attention = (4 if fp32_outputs and not varlen else a) * (q + 2 * k_w + q)
    mlp = 3 * (4 if fp32_outputs else a) * i
    if method == "full":
        # every linear keeps its input (q,k,v share one, gate/up share one) and the norms their bf16 outputs
        linears = a * (2 * h + q + i) + 2 * a * h
        return norms + attention + mlp + linears
    per_elem = a + (1 if lora_dropout > 0 else 0)
    branches = per_elem * (5 * h + q + i) + 7 * 4 * lora_r
    return norms + attention + mlp + branches


def estimate_peak_memory(model_config: Any, method: str, micro_batch: int, seq_len: int,
                         gradient_checkpointing: bool, packing: bool, lora_r: int = 16, dtype: str = "bfloat16",
                         *, lora_dropout: float = 0.05, attention: str = "sdpa", loss: str = "fused",
                         double_quant: bool = True, kbit_upcast: bool = True, completion_fraction: float = 1.0,
                         name: str | None = None) -> dict:
    """Estimated peak GPU memory (GiB) of one training job; see the module docstring for every term.

    ``attention``: ``sdpa`` (transformers' default: padded or packed batches carry a mask) or ``varlen``
    (a variable-length flash kernel that reads the packed sequences' boundaries; no mask).
    ``loss``: ``fused`` (TRL's chunked LM head, the pipeline) or ``full`` (the model computes full logits).
    Returns ``{"total_gb", "allocated_gb", "parts": {...}, "tokens", "inputs"}``; ``allocated_gb`` is the part that
    ``torch.cuda.max_memory_allocated`` sees (total minus overhead).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if attention not in ("sdpa", "varlen"):
        raise ValueError(f"attention must be 'sdpa' or 'varlen', got {attention!r}")
    if loss not in ("fused", "full"):
        raise ValueError(f"loss must be 'fused' or 'full', got {loss!r}")
    if micro_batch < 1 or seq_len < 1:
        raise ValueError(f"micro_batch and seq_len must be >= 1, got {micro_batch} and {seq_len}")
    inputs = dict(method=method, micro_batch=int(micro_batch), seq_len=int(seq_len),
                  gradient_checkpointing=bool(gradient_checkpointing), packing=bool(packing), lora_r=int(lora_r),
                  dtype=dtype, lora_dropout=float(lora_dropout), attention=attention, loss=loss,
                  double_quant=bool(double_quant), kbit_upcast=bool(kbit_upcast),
                  completion_fraction=float(completion_fraction))
    d = model_dims(model_config, name)
    wb = DTYPE_BYTES[str(dtype).replace("torch.", "")]
    a = 2  # activations in bf16/fp16 (autocast or a bf16 model)
    counts = parameter_counts(d)
    h, V, L = d.hidden, d.vocab, d.layers
    T = micro_batch * seq_len

    # weights
    if method == "qlora":
        per_weight = 0.5 + (1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DQ_BLOCK) if double_quant else 4 / NF4_BLOCK)
        rest_bytes = 4 if kbit_upcast else wb
        weights = counts["linear"] * per_weight + (counts["embed"] + counts["lm_head"] + counts["other"]) * rest_bytes
    else:
        weights = counts["total"] * wb

    # trainable parameters, gradients, AdamW moments
    if method == "full":
        trainable = counts["total"] * 12
    else:
        n_lora = lora_parameter_count(d, lora_r)
        trainable = n_lora * (8 if method == "qlora" else 16)

    # activations
    masked = attention == "sdpa" and (packing or micro_batch > 1)
    fp32_outputs = method == "qlora" and kbit_upcast
    per_layer = _layer_bytes_per_token(d, method, lora_r, lora_dropout, masked, a, fp32_outputs,
                                       varlen=attention == "varlen")
    stream = 4 if (method == "qlora" and kbit_upcast) else a  # residual stream dtype (fp32 after the kbit upcast)
    if gradient_checkpointing:
        layers = L * stream * h * T + per_layer * T
    else:
        layers = L * per_layer * T
    working = (8 * h + 6 * d.intermediate) * T
    outside = 10 * h * T
    if masked:
        row = T if packing else seq_len
        rows = 1 if packing else micro_batch
        mask_bytes = rows * row * row * (1 + 2 * (1 if gradient_checkpointing else L))
    else:
        mask_bytes = 0
    activations = layers + working + outside + mask_bytes

    # logits
    if loss == "full":
        logits = FULL_LOGITS_BYTES * T * V
    else:
        n = max(1, int(T * completion_fraction))
        logits = 2 * min(n, FUSED_TOKEN_TILE) * min(V, FUSED_VOCAB_TILE) + 6 * h * n

    if loss == "full":
        slack = FULL_LOGITS_SLACK * logits + FRAGMENTATION * activations
    else:
        slack = ALLOCATOR_BASE_GIB * GIB + FRAGMENTATION * (activations + logits)
        if method == "qlora" and kbit_upcast:
            # the fused head multiplies bf16 hidden states with the fp32-upcast LM head: autocast makes a bf16
            # copy of it in every forward (attributed from the QLoRA runs' extra slack, not traced)
            slack += 2 * V * h
    overhead = CONTEXT_GIB * GIB + slack
    parts = {"weights": weights, "lora+optimizer": trainable, "activations": activations, "logits": logits,
             "overhead": overhead}
    parts_gb = {k: round(v / GIB, 3) for k, v in parts.items()}
    total = sum(parts.values())
    return {
        "model": d.name,
        "total_gb": round(total / GIB, 3),
        "allocated_gb": round((total - overhead) / GIB, 3),
        "parts": parts_gb,
        "tokens": T,
        "inputs": inputs,
        "dims": asdict(d),
        "params": counts,
    }


def _describe(est: dict) -> str:
    i = est["inputs"]
    rows = "packed bins" if i["packing"] else "rows"
    return (f"model '{est['model']}' ({i['method']}, micro-batch {i['micro_batch']} {rows} x {i['seq_len']} tokens, "
            f"gradient checkpointing {'on' if i['gradient_checkpointing'] else 'off'}, "
            f"packing {'on' if i['packing'] else 'off'}, LoRA r={i['lora_r']})")


def _re_estimate(est: dict, **changes) -> dict:
    inputs = copy.deepcopy(est["inputs"])
    inputs.update(changes)
    return estimate_peak_memory(ModelDims(**est["dims"]), name=est["model"], **inputs)


def alternatives(est: dict, available_gb: float, margin: float = DEFAULT_MARGIN) -> list[tuple[str, dict]]:
    """Settings that would fit ``available_gb``: (advice, estimate) pairs, the cheapest change first."""
    budget = available_gb * (1 - margin)
    out = []
    i = est["inputs"]
    mb = i["micro_batch"]
    while mb > 1:
        mb //= 2
        e = _re_estimate(est, micro_batch=mb)
        if e["total_gb"] <= budget:
            factor = i["micro_batch"] // mb
            out.append((f"lower train.per_device_batch_size to {mb} and multiply gradient_accumulation_steps by "
                        f"{factor} (same effective batch)", e))
            break
    if not i["gradient_checkpointing"]:
        e = _re_estimate(est, gradient_checkpointing=True)
        if e["total_gb"] <= budget:
            out.append(("turn on train.gradient_checkpointing (about a third slower per token)", e))
    if i["method"] == "lora":
        e = _re_estimate(est, method="qlora")
        if e["total_gb"] <= budget:
            out.append(("use method qlora (4-bit base weights)", e))
    if i["seq_len"] > 256:
        e = _re_estimate(est, seq_len=i["seq_len"] // 2)
        if e["total_gb"] <= budget:
            out.append((f"lower train.max_length to {i['seq_len'] // 2} (longer dialogues get truncated)", e))
    return out


def free_gpu_memory_gb(device: int | None = None) -> tuple[float, float, str] | None:
    """(free GiB, total GiB, device name) of the current CUDA device, or None without CUDA."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device() if device is None else device
    free, total = torch.cuda.mem_get_info(dev)
    return free / GIB, total / GIB, torch.cuda.get_device_name(dev)


def check_fits(estimate: dict, available_gb: float | None = None, margin: float = DEFAULT_MARGIN,
               device_name: str | None = None) -> dict:
    """Raise :class:`MemoryPlanError` when ``estimate['total_gb']`` exceeds ``available_gb`` less ``margin``.

    ``available_gb`` defaults to the free memory of the current CUDA device (``torch.cuda.mem_get_info``); without
    CUDA and without ``available_gb`` nothing is checked. Returns ``{"fits", "checked", "available_gb", ...}``.
    """
    if available_gb is None:
        info = free_gpu_memory_gb()
        if info is None:
            return {"fits": None, "checked": False, "reason": "no CUDA device", "estimate_gb": estimate["total_gb"]}
        available_gb, _total, name = info
        device_name = device_name or name
    device_name = device_name or "the GPU"
    budget = available_gb * (1 - margin)
    result = {"fits": estimate["total_gb"] <= budget, "checked": True, "available_gb": round(available_gb, 2),
              "budget_gb": round(budget, 2), "estimate_gb": estimate["total_gb"], "device": device_name}
    if result["fits"]:
        return result
    parts = ", ".join(f"{k} {v:.1f}" for k, v in estimate["parts"].items())
    advice = alternatives(estimate, available_gb, margin)
    if advice:
        todo = "; or ".join(f"{text} (estimated {e['total_gb']:.1f} GiB)" for text, e in advice)
    else:
        todo = "no single change of batch, checkpointing, method or length fits: use a larger GPU or a smaller model"
    raise MemoryPlanError(
        f"{_describe(estimate)} needs about {estimate['total_gb']:.1f} GiB of GPU memory ({parts}), but "
        f"{device_name} has {available_gb:.1f} GiB free (the planner keeps {margin:.0%} in reserve: "
        f"{budget:.1f} GiB usable). To fit: {todo}. The estimate is kdsum.memory.estimate_peak_memory "
        f"(within about 15% of measured peaks, docs/BENCHMARKS.md section 3).")


def estimate_for_spec(spec: dict, model_config: Any, method: str | None = None, attention: str = "sdpa") -> dict:
    """The estimate of a resolved pipeline spec (kdsum.config.resolve) for a causal model trained by the pipeline
    (TRL SFTTrainer: fused LM head; transformers' default SDPA attention unless ``attention='varlen'``)."""
    t = spec["train"]
    lora = spec.get("lora") or {}
    method = method or spec["method"]
    return estimate_peak_memory(
        model_config, method, int(t["per_device_batch_size"]), int(t["max_length"]),
        bool(t["gradient_checkpointing"]), bool(t.get("packing", False)), int(lora.get("r", 16)), "bfloat16",
        lora_dropout=float(lora.get("dropout", 0.0)), attention=attention, loss="fused", double_quant=bool((spec.get("quantization") or {}).get("double_quant", True)),
        name=spec.get("name"))


def check_spec_fits(spec: dict, source: str, method: str | None = None, available_gb: float | None = None,
                    attention: str = "sdpa") -> dict:
    """Check a causal LoRA/QLoRA job before its model is loaded: read the model's config from ``source`` (a local
    directory or a hub id), estimate, compare with the free GPU memory. Skipped (returns ``checked: False``) without
    CUDA, for seq2seq models, or when the config cannot be read (training then reports the real problem).
    ``attention``: the job's resolved ``train.attention`` (kdsum.attention); ``eager`` is planned as ``sdpa``
    (the debugging path also keeps the attention probabilities: the plan is low for it)."""
    method = method or spec["method"]
    if spec.get("family") != "causal" or method not in ("lora", "qlora"):
        return {"checked": False, "reason": f"{spec.get('family')}/{method}: the planner covers causal LoRA/QLoRA"}
    if available_gb is None and free_gpu_memory_gb() is None:
        return {"checked": False, "reason": "no CUDA device"}
    try:
        from transformers import AutoConfig

        try:  # a local directory or the HF cache first: the planner makes no network call it can avoid
            model_config = AutoConfig.from_pretrained(source, local_files_only=True)
        except OSError:
            model_config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # offline hub id, unreadable dir: training will report the real problem
        log.warning("memory check skipped: cannot read the config of %s (%s)", source, exc)
        return {"checked": False, "reason": f"config unreadable: {exc.__class__.__name__}"}
    est = estimate_for_spec(spec, model_config, method, attention="varlen" if attention == "varlen" else "sdpa")
    result = check_fits(est, available_gb=available_gb)
    result["estimate"] = est
    log.info("memory plan: %s needs ~%.1f GiB, %.1f GiB free", spec.get("name"), est["total_gb"],
             result.get("available_gb", float("nan")))
    return result
