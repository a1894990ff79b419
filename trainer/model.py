"""The model: a Llama (GQA, RoPE, RMSNorm, SwiGLU) through transformers' ``LlamaForCausalLM``.

Using the transformers class means every checkpoint is Hugging Face format by
construction, which vLLM serves unchanged. Parallelism, activation
checkpointing and compile are applied from outside (see ``parallelize.py``).

Presets (parameters counted with a 4,096-token vocabulary; 1b and 8b with Llama 3's 128,256):

| preset | dim | layers | heads | kv heads | head dim | ffn | params | where |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| nano  | 64   | 2  | 2  | 1 | 32  | 192   | 0.36M | tests |
| tiny  | 128  | 4  | 4  | 2 | 32  | 384   | 1.3M  | CPU, ``tiny-chat`` (0.82M with its byte vocabulary) |
| small | 256  | 6  | 4  | 2 | 64  | 768   | 5.8M  | CPU |
| 25m   | 512  | 8  | 8  | 4 | 64  | 1536  | 27M   | CPU (slow) / GPU |
| 100m  | 768  | 12 | 12 | 4 | 64  | 2048  | 79M   | GPU |
| 1b    | 2048 | 16 | 32 | 8 | 64  | 8192  | 1.24B | GPU (Llama 3.2 1B shape) |
| 8b    | 4096 | 32 | 32 | 8 | 128 | 14336 | 8.03B | GPU (Llama 3 8B shape) |

Head dims are 32/64/128: sizes vLLM's CPU attention kernels support.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(kw_only=True, slots=True, frozen=True)
class Preset:
    dim: int
    """Hidden size (d_model)."""
    n_layers: int
    n_heads: int
    """Query heads; head_dim = dim / n_heads."""
    n_kv_heads: int
    """Key/value heads (GQA groups); must divide n_heads."""
    ffn_dim: int
    """SwiGLU inner size."""
    vocab_size: int | None = None
    """Fixed vocabulary (for shapes copied from released models); None takes the trained tokenizer's."""
    tie_embeddings: bool = True
    """Share the input embedding and the LM head (worth it when the vocabulary is a big share of the parameters)."""
    rope_theta: float = 10_000.0
    max_seq_len: int = 2048


PRESETS: dict[str, Preset] = {
    "nano": Preset(dim=64, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=192),
    "tiny": Preset(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384),
    "small": Preset(dim=256, n_layers=6, n_heads=4, n_kv_heads=2, ffn_dim=768),
    "25m": Preset(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1536),
    "100m": Preset(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, ffn_dim=2048),
    "1b": Preset(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192, vocab_size=128_256,
                 rope_theta=500_000.0, max_seq_len=8192),
    "8b": Preset(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, vocab_size=128_256,
                 tie_embeddings=False, rope_theta=500_000.0, max_seq_len=8192),
}


class ModelTooLarge(RuntimeError):
    """Training this model would not fit in the memory of this machine."""


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def llama_config(preset: Preset, vocab_size: int, *, bos: int, eos: list[int], pad: int, seq_len: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=preset.vocab_size or vocab_size,
        hidden_size=preset.dim,
        intermediate_size=preset.ffn_dim,
        num_hidden_layers=preset.n_layers,
        num_attention_heads=preset.n_heads,
        num_key_value_heads=preset.n_kv_heads,
        max_position_embeddings=max(preset.max_seq_len, seq_len),
        rms_norm_eps=1e-5,
        rope_theta=preset.rope_theta,
        tie_word_embeddings=preset.tie_embeddings,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        torch_dtype="float32",
        attn_implementation="sdpa",
    )


def count_params(cfg) -> int:
    """Parameters of a ``LlamaConfig`` without allocating it (what the memory check needs)."""
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    head_dim = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q = d * cfg.num_attention_heads * head_dim
    kv = 2 * d * cfg.num_key_value_heads * head_dim
    per_layer = 2 * q + kv + 3 * d * cfg.intermediate_size + 2 * d  # q and o, k and v, SwiGLU, two RMSNorms
    embed = vocab * d * (1 if cfg.tie_word_embeddings else 2)
    return embed + layers * per_layer + d


def available_memory_bytes(device: torch.device) -> int:
    """Free memory where the model will live: the GPU's, or RAM within this container's cgroup limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    avail = psutil.virtual_memory().available
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return int(avail)


def training_bytes(cfg, *, trainable_fraction: float, micro_batch: int, seq_len: int, world_size: int,
                   sharded: bool, reference_copy: bool) -> int:
    """Rough peak bytes per process: fp32 weights, grads and AdamW moments, plus activations.

    Weights cost 4 bytes a parameter; each trainable one adds 4 (grad) + 8 (two moments).
    FSDP divides the states by the world size. Activations: about 34·d bytes a token a
    layer in fp32 plus the logits (Korthikanti et al. 2022, without recomputation).
    """
    n = count_params(cfg)
    states = n * 4 + n * trainable_fraction * 12 + (n * 4 if reference_copy else 0)
    if sharded:
        states /= world_size
    tokens = micro_batch * seq_len
    acts = tokens * (cfg.num_hidden_layers * 34 * cfg.hidden_size + 2 * 4 * cfg.vocab_size)
    return int(states + acts)


def check_fits(cfg, device: torch.device, *, processes_here: int = 1, **kw) -> int:
    """Raise :class:`ModelTooLarge` before allocating anything if training cannot fit; return the estimate."""
    need = training_bytes(cfg, **kw)
    total = need * (processes_here if device.type == "cpu" else 1)
    have = available_memory_bytes(device)
    if os.environ.get("LLMSVC_TRAINER_SKIP_MEMORY_CHECK") != "1" and total > 0.9 * have:
        gib = 2**30
        raise ModelTooLarge(
            f"this model ({count_params(cfg) / 1e6:,.1f}M parameters) needs about {total / gib:,.1f} GiB to train "
            f"on {device.type} ({processes_here} process(es)) but only {have / gib:,.1f} GiB is available; "
            "choose a smaller preset, a smaller batch, FSDP over more processes, or the lora recipe"
        )
    return total


def build_model(cfg, seed: int) -> torch.nn.Module:
    """Initialise a Llama from ``cfg`` deterministically (same seed, same weights on every rank)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def load_model(path: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs a token: 6·N for the matmuls plus 12·L·d·T for attention (PaLM appendix B)."""
    n = count_params(cfg) - cfg.vocab_size * cfg.hidden_size  # embedding lookups are not matmuls
    if cfg.tie_word_embeddings:
        n += cfg.vocab_size * cfg.hidden_size  # ... but the tied LM head is
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


# Dense bf16 peak of common accelerators, FLOP/s, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
