"""Real PEFT LoRA adapters for tests, made in seconds on CPU.

``lora_B`` is initialised at random (PEFT starts it at zero, which would make the adapter a no-op), so an
adapter visibly changes the base model's greedy output.
"""

from __future__ import annotations

from pathlib import Path


def make_adapter(base: Path, out: Path, *, r: int = 8, targets=("q_proj", "v_proj"), seed: int = 0,
                 hidden_size: int | None = None) -> Path:
    """Write a LoRA adapter of ``base`` to ``out``; with ``hidden_size``, of a differently shaped model instead
    (an adapter that belongs to another base)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    if hidden_size is None:
        model = AutoModelForCausalLM.from_pretrained(base)
    else:
        cfg = AutoConfig.from_pretrained(base)
        cfg.hidden_size, cfg.intermediate_size = hidden_size, 2 * hidden_size
        model = AutoModelForCausalLM.from_config(cfg)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    peft_model.save_pretrained(out)
    return out
