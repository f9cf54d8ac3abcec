"""GPU-memory planner for the training stage: estimate a job's peak GPU memory before loading the model.

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
  ``trainable_tokens`` (the data-token rows trained through PEFT's ``trainable_token_indices``, kdsum.models.data_tokens):
  16 bytes per trained value (``rows x h``, twice when the head is untied), plus the merged ``V x h`` weight that
  PEFT builds in every forward (``index_copy`` of the trained rows into the frozen matrix) and its gradient, kept
  together in the LM head's backward pass: ``2 V h`` x the embedding's bytes (a prior from PEFT's code, not
  measured).
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
* **ddp_buckets** -- only with ``world_size > 1`` (kdsum.gpu.distributed; every other term is per rank already, since
  each rank holds the whole model and its own micro-batch): DDP's reducer keeps its gradient buckets, one more
  copy of the trainable parameters' gradients (4 bytes each, 2 under QLoRA). Derived from DDP's design, not
  measured.

``total_gb`` is what the job needs on the card (peak reserved + memory outside the allocator); ``allocated_gb``
is the part ``torch.cuda.max_memory_allocated`` sees. The constants were calibrated against the H100 runs of
``benchmarks/bench_train.py`` (docs/BENCHMARKS.md, section 3, which lists estimate vs measured and says which
configurations were measured and which terms are priors). The refusal of a job that cannot fit:
kdsum.gpu.preflight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

GIB = 2**30
DTYPE_BYTES = {"bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "float32": 4, "fp32": 4}
METHODS = ("full", "lora", "qlora")
ACTIVATION_BYTES = 2  # activations in bf16/fp16 (autocast or a bf16 model)
NF4_BLOCK = 64  # bitsandbytes 4-bit block size (weights per absmax)
NF4_DQ_BLOCK = 256  # absmax values per second-level (fp32) constant with double quantization
FUSED_TOKEN_TILE = 4096  # TRL chunked log-prob: tokens per projection tile
FUSED_VOCAB_TILE = 32768  # TRL chunked log-prob: vocabulary entries per tile
FULL_LOGITS_BYTES = 12  # bytes per (token x vocab entry) with the model's own loss (see module docstring)
# outside PyTorch's allocator: CUDA context, cuBLAS/cuDNN handles (H100, torch 2.11: 1.47-1.48 GiB in all six
# measured runs)
CONTEXT_GIB = 1.47
# allocator slack with full logits of padded batches of varying length, x the 12 T V logits term: reserved -
# allocated was 5.2-5.6 GiB in the four full-logit runs of 2026-11-21 (3B: 2.0 x, 7B: 1.2 x their logits terms);
# 1.5 is calibrated on them
FULL_LOGITS_SLACK = 1.5
ALLOCATOR_BASE_GIB = 1.0  # slack of the fused-loss (pipeline) runs: 1.1-1.8 GiB whatever the activations
FRAGMENTATION = 0.02  # ... growing slowly with the per-step memory (calibrated on the seven pipeline runs)


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
        raise ValueError(
            f"model config {name or cfg.get('_name_or_path') or ''!r} lacks hidden_size / "
            f"num_hidden_layers / num_attention_heads; the memory planner handles decoder-only models"
        )
    kv_heads = _get(cfg, "num_key_value_heads", default=heads)
    head_dim = _get(cfg, "head_dim", default=hidden // heads)
    intermediate = _get(cfg, "intermediate_size", "n_inner", default=4 * hidden)
    vocab = _get(cfg, "vocab_size")
    tied = bool(_get(cfg, "tie_word_embeddings", default=True))
    qkv_bias = bool(_get(cfg, "attention_bias", default=False)) or cfg.get("model_type") == "qwen2"
    label = name or cfg.get("_name_or_path") or cfg.get("model_type") or "model"
    return ModelDims(
        str(label),
        int(hidden),
        int(layers),
        int(heads),
        int(kv_heads),
        int(head_dim),
        int(intermediate),
        int(vocab),
        tied,
        qkv_bias,
    )


def parameter_counts(d: ModelDims) -> dict[str, int]:
    """Parameters by kind: ``linear`` (the seven projections of every layer, the ones LoRA adapts and QLoRA
    quantizes), ``embed``, ``lm_head`` (0 when tied), ``other`` (norms, biases) and ``total``."""
    h, q, kv, i = d.hidden, d.q_dim, d.kv_dim, d.intermediate
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i
    linear = d.layers * per_layer
    other = d.layers * 2 * h + h + (d.layers * (q + 2 * kv) if d.qkv_bias else 0)
    embed = d.vocab * h
    lm_head = 0 if d.tied else d.vocab * h
    return {
        "linear": linear,
        "embed": embed,
        "lm_head": lm_head,
        "other": other,
        "total": linear + embed + lm_head + other,
    }


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


def _layer_bytes_per_token(
    d: ModelDims,
    method: str,
    lora_r: int,
    lora_dropout: float,
    masked: bool,
    act_bytes: int,
    fp32_outputs: bool = False,
    varlen: bool = False,
    liger: bool = False,
) -> float:
    """Bytes that autograd keeps per token for one decoder layer (no checkpointing); see the module docstring.

    ``fp32_outputs``: QLoRA after ``prepare_model_for_kbit_training``: the fp32 norms make every 4-bit linear's
    input fp32 and bitsandbytes returns its output in the input's dtype, so the MLP's saved tensors are fp32, and
    so are SDPA's q/k/v/output (the varlen path casts them to bf16 for the flash kernel, which saves those).
    ``liger`` (kdsum.gpu.kernels): Liger's RMSNorm keeps its input in the stream's dtype (bf16, not an fp32 copy), its
    SwiGLU keeps gate and up but not the SiLU output."""
    h, q, kv, i, a = d.hidden, d.q_dim, d.kv_dim, d.intermediate, act_bytes
    norms = 2 * (4 if fp32_outputs or not liger else a) * h
    k_w = q if (masked and d.kv_heads != d.heads) else kv
    attention = (4 if fp32_outputs and not varlen else a) * (q + 2 * k_w + q)
    mlp = (2 if liger else 3) * (4 if fp32_outputs else a) * i
    if method == "full":
        # every linear keeps its input (q,k,v share one, gate/up share one) and the norms their bf16 outputs
        linears = a * (2 * h + q + i) + 2 * a * h
        return norms + attention + mlp + linears
    per_elem = a + (1 if lora_dropout > 0 else 0)
    branches = per_elem * (5 * h + q + i) + 7 * 4 * lora_r
    return norms + attention + mlp + branches


def estimate_peak_memory(
    model_config: Any,
    method: str,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    packing: bool,
    lora_r: int = 16,
    dtype: str = "bfloat16",
    *,
    lora_dropout: float = 0.05,
    attention: str = "sdpa",
    kernels: str = "none",
    loss: str = "fused",
    double_quant: bool = True,
    kbit_upcast: bool = True,
    completion_fraction: float = 1.0,
    trainable_tokens: int = 0,
    name: str | None = None,
    world_size: int = 1,
) -> dict:
    """Estimated peak GPU memory (GiB) of one training job; see the module docstring for every term.

    ``attention``: ``sdpa`` (transformers' default: padded or packed batches carry a mask) or ``varlen``
    (a variable-length flash kernel that reads the packed sequences' boundaries; no mask).
    ``kernels``: ``none`` or ``liger`` (kdsum.gpu.kernels: Liger's fused norms and SwiGLU keep less).
    ``loss``: ``fused`` (TRL's chunked LM head, the pipeline) or ``full`` (the model computes full logits).
    ``model_config``'s vocabulary is the model's as trained: pass a :class:`ModelDims` with ``vocab`` =
    ``len(tokenizer)`` when data tokens grow it (kdsum.gpu.preflight.estimate_for_spec does).
    ``trainable_tokens``: how many embedding rows are trained (data tokens added to a hub vocabulary).
    Returns ``{"total_gb", "allocated_gb", "parts": {...}, "tokens", "inputs"}``; ``allocated_gb`` is the part that
    ``torch.cuda.max_memory_allocated`` sees (total minus overhead).
    """
    _check_inputs(method, attention, kernels, loss, micro_batch, seq_len)
    i = dict(
        method=method,
        micro_batch=int(micro_batch),
        seq_len=int(seq_len),
        gradient_checkpointing=bool(gradient_checkpointing),
        packing=bool(packing),
        lora_r=int(lora_r),
        dtype=dtype,
        lora_dropout=float(lora_dropout),
        attention=attention,
        kernels=kernels,
        loss=loss,
        double_quant=bool(double_quant),
        kbit_upcast=bool(kbit_upcast),
        completion_fraction=float(completion_fraction),
        trainable_tokens=int(trainable_tokens),
    )
    d = model_dims(model_config, name)
    counts = parameter_counts(d)
    T = micro_batch * seq_len
    activations = _activation_bytes(d, i, T)
    logits = _logits_bytes(d, i, T)
    overhead = _overhead_bytes(d, i, activations, logits)
    parts = {
        "weights": _weight_bytes(counts, i),
        "lora+optimizer": _trainable_bytes(d, counts, i),
        "activations": activations,
        "logits": logits,
        "overhead": overhead,
    }
    if world_size > 1:
        i["world_size"] = int(world_size)
        parts["ddp_buckets"] = _ddp_bucket_bytes(d, counts, i)
    total = sum(parts.values())
    return {
        "model": d.name,
        "total_gb": round(total / GIB, 3),
        "allocated_gb": round((total - overhead) / GIB, 3),
        "parts": {k: round(v / GIB, 3) for k, v in parts.items()},
        "tokens": T,
        "inputs": i,
        "dims": asdict(d),
        "params": counts,
    }


def _check_inputs(method: str, attention: str, kernels: str, loss: str, micro_batch: int, seq_len: int) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if attention not in ("sdpa", "varlen"):
        raise ValueError(f"attention must be 'sdpa' or 'varlen', got {attention!r}")
    if kernels not in ("none", "liger"):
        raise ValueError(f"kernels must be 'none' or 'liger', got {kernels!r}")
    if loss not in ("fused", "full"):
        raise ValueError(f"loss must be 'fused' or 'full', got {loss!r}")
    if micro_batch < 1 or seq_len < 1:
        raise ValueError(f"micro_batch and seq_len must be >= 1, got {micro_batch} and {seq_len}")


def _weight_bytes(counts: dict[str, int], i: dict) -> float:
    """bf16/fp32 parameters; QLoRA: the linears in NF4, the rest fp32 after the kbit upcast."""
    wb = DTYPE_BYTES[str(i["dtype"]).replace("torch.", "")]
    if i["method"] != "qlora":
        return counts["total"] * wb
    if i["double_quant"]:
        per_weight = 0.5 + (1 / NF4_BLOCK + 4 / (NF4_BLOCK * NF4_DQ_BLOCK))
    else:
        per_weight = 0.5 + 4 / NF4_BLOCK
    rest_bytes = 4 if i["kbit_upcast"] else wb
    return counts["linear"] * per_weight + (counts["embed"] + counts["lm_head"] + counts["other"]) * rest_bytes


def _trainable_bytes(d: ModelDims, counts: dict[str, int], i: dict) -> float:
    """Trainable parameters, their gradients and AdamW's two moments."""
    if i["method"] == "full":
        return counts["total"] * 12
    adapters = lora_parameter_count(d, i["lora_r"]) * (8 if i["method"] == "qlora" else 16)
    rows = i.get("trainable_tokens", 0)
    if not rows:
        return adapters
    embed_bytes = (
        4 if (i["method"] == "qlora" and i["kbit_upcast"]) else DTYPE_BYTES[str(i["dtype"]).replace("torch.", "")]
    )
    values = rows * d.hidden * (1 if d.tied else 2)
    return adapters + 16 * values + 2 * d.vocab * d.hidden * embed_bytes


def _ddp_bucket_bytes(d: ModelDims, counts: dict[str, int], i: dict) -> float:
    """DDP's gradient buckets: one more copy of the trainable gradients (module docstring)."""
    if i["method"] == "full":
        return counts["total"] * 4
    trainable = lora_parameter_count(d, i["lora_r"]) + i["trainable_tokens"] * d.hidden * (1 if d.tied else 2)
    return trainable * (2 if i["method"] == "qlora" else 4)


def _activation_bytes(d: ModelDims, i: dict, T: int) -> float:
    """What autograd keeps for the backward pass, the working set and the attention masks."""
    a = ACTIVATION_BYTES
    h, L = d.hidden, d.layers
    packing, ckpt = i["packing"], i["gradient_checkpointing"]
    masked = i["attention"] == "sdpa" and (packing or i["micro_batch"] > 1)
    fp32_outputs = i["method"] == "qlora" and i["kbit_upcast"]
    per_layer = _layer_bytes_per_token(
        d,
        i["method"],
        i["lora_r"],
        i["lora_dropout"],
        masked,
        a,
        fp32_outputs,
        varlen=i["attention"] == "varlen",
        liger=i.get("kernels") == "liger",
    )
    stream = 4 if fp32_outputs else a  # residual stream dtype (fp32 after the kbit upcast)
    layers = (L * stream * h * T + per_layer * T) if ckpt else L * per_layer * T
    working = (8 * h + 6 * d.intermediate) * T
    outside = 10 * h * T
    mask_bytes = 0
    if masked:
        row = T if packing else i["seq_len"]
        rows = 1 if packing else i["micro_batch"]
        mask_bytes = rows * row * row * (1 + 2 * (1 if ckpt else L))
    return layers + working + outside + mask_bytes


def _logits_bytes(d: ModelDims, i: dict, T: int) -> float:
    if i["loss"] == "full":
        return FULL_LOGITS_BYTES * T * d.vocab
    n = max(1, int(T * i["completion_fraction"]))
    return 2 * min(n, FUSED_TOKEN_TILE) * min(d.vocab, FUSED_VOCAB_TILE) + 6 * d.hidden * n


def _overhead_bytes(d: ModelDims, i: dict, activations: float, logits: float) -> float:
    """Memory outside PyTorch's allocator plus the caching allocator's slack."""
    if i["loss"] == "full":
        slack = FULL_LOGITS_SLACK * logits + FRAGMENTATION * activations
    else:
        slack = ALLOCATOR_BASE_GIB * GIB + FRAGMENTATION * (activations + logits)
        if i["method"] == "qlora" and i["kbit_upcast"]:
            # the fused head multiplies bf16 hidden states with the fp32-upcast LM head: autocast makes a bf16
            # copy of it in every forward (attributed from the QLoRA runs' extra slack, not traced)
            slack += 2 * d.vocab * d.hidden
    return CONTEXT_GIB * GIB + slack


def estimate_generation_memory(
    model_config: Any,
    rows: int,
    tokens: int,
    dtype: str = "bfloat16",
    *,
    nf4_source: bool = False,
    double_quant: bool = True,
    name: str | None = None,
) -> dict:
    """Estimated peak GPU memory (GiB) of generating with a 16-bit (or fp32) copy of a decoder-only model: the
    weights, a KV cache of ``rows`` sequences (batch x beams) of ``tokens`` (prompt budget + new tokens) in the
    model's dtype, one layer's prefill working set (``(4h + 3i)`` per token), two fp32 copies of one step's logits,
    and :data:`CONTEXT_GIB`. ``nf4_source``: the copy is dequantized from a 4-bit base (QLoRA), which stays on the
    card while its layers are replaced, so the peak is the larger of that and the cache. A prior from the tensors'
    sizes, not calibrated like :func:`estimate_peak_memory`."""
    d = model_dims(model_config, name)
    wb = DTYPE_BYTES[str(dtype).replace("torch.", "")]
    counts = parameter_counts(d)
    weights = counts["total"] * wb
    cache = 2 * d.layers * d.kv_dim * wb * rows * tokens
    working = (4 * d.hidden + 3 * d.intermediate) * wb * rows * tokens + 2 * 4 * rows * d.vocab
    nf4 = 0.0
    if nf4_source:
        extra = 1 / NF4_BLOCK + (4 / (NF4_BLOCK * NF4_DQ_BLOCK) if double_quant else 3 / NF4_BLOCK)
        nf4 = counts["linear"] * (0.5 + extra)
    parts = {"weights": weights, "cache+working": max(cache + working, nf4), "overhead": CONTEXT_GIB * GIB}
    total = sum(parts.values())
    return {
        "model": d.name,
        "total_gb": round(total / GIB, 3),
        "parts": {k: round(v / GIB, 3) for k, v in parts.items()},
        "inputs": {"rows": int(rows), "tokens": int(tokens), "dtype": dtype, "nf4_source": bool(nf4_source)},
    }
