"""Does a job fit in memory? A rough estimate made before anything starts.

Per replica: the weights, gradients and AdamW states (16 bytes per trained
parameter in fp32), a frozen copy for LoRA and DPO's reference model, and
activations (Korthikanti et al. 2022: ``s·b·h·(34 + 5·a·s/h)`` bytes per layer
in 16-bit, doubled for fp32) plus the logits and their gradient. The estimate
is an order of magnitude, meant to refuse an 8B full fine-tune on a laptop,
not to pack memory tightly.
"""

from __future__ import annotations

import json
from pathlib import Path

GIB = 1024**3


def param_count(cfg: dict) -> int:
    """Parameters of a Llama-style ``config.json``."""
    h, layers, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv, hd = cfg.get("num_key_value_heads") or heads, cfg.get("head_dim") or h // heads
    attn = 2 * h * heads * hd + 2 * h * kv * hd  # q, o and k, v projections
    per_layer = attn + 3 * h * inter + 2 * h  # SwiGLU gate/up/down, two RMSNorms
    emb = cfg["vocab_size"] * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return layers * per_layer + emb + h


def estimate_bytes(cfg: dict, *, recipe: str, batch: int, seq_len: int, gpu: bool, shards: int = 1) -> int:
    """Bytes one training process needs; ``shards`` > 1 assumes FSDP splits the states across processes."""
    n = param_count(cfg)
    act_bytes = 1 if gpu else 2  # bf16 autocast on GPU, fp32 on CPU (relative to the 16-bit formula)
    if recipe == "lora":
        states = n * (2 if gpu else 4)  # frozen base; adapters are negligible
    else:
        states = n * 16 // shards
        if recipe == "dpo":
            states += n * (2 if gpu else 4)  # frozen reference model
    h, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    acts = seq_len * batch * h * (34 + 5 * heads * seq_len / h) * layers * act_bytes
    logits = 2 * batch * seq_len * cfg["vocab_size"] * 4
    pairs = 2 if recipe == "dpo" else 1  # chosen and rejected
    return int(states + pairs * (acts + logits))


def read_config(model_dir: str) -> dict | None:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None


def fit_problem(cfg: dict | None, *, recipe: str, hparams: dict, budget_bytes: float, processes: int, gpu: bool,
                shards: int = 1) -> str | None:
    """A message when the job cannot fit in ``budget_bytes`` (per device on GPU, per host on CPU)."""
    if cfg is None or "hidden_size" not in cfg:
        return None
    seq = min(hparams.get("seq_len") or 1024, cfg.get("max_position_embeddings") or 1024)
    need = estimate_bytes(cfg, recipe=recipe, batch=hparams["batch_size"], seq_len=seq, gpu=gpu, shards=shards)
    total = need if gpu else need * processes
    if total <= budget_bytes:
        return None
    where = "per GPU" if gpu else f"for {processes} process(es)"
    return (f"This job needs about {total / GIB:.1f} GiB of memory {where} ({param_count(cfg) / 1e6:.0f}M parameters, "
            f"recipe {recipe}, batch_size {hparams['batch_size']}, seq_len {seq}) but {budget_bytes / GIB:.1f} GiB "
            "is available. Use a smaller model, the lora recipe, or a smaller batch_size or seq_len.")
