"""``lora``: low-rank adapters (peft) on a frozen base; written as an adapter, or merged into the base.

The data may be conversations (loss on assistant turns) or plain text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..spec import LoraSpec
from .common import JobContext, Setup, detect_kind, lm_setup


def add_adapters(model: torch.nn.Module, lora: LoraSpec) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in names]
    if not targets:
        raise ValueError(f"none of lora.target_modules {lora.target_modules} exist in the base model")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def setup(ctx: JobContext) -> Setup:
    spec = ctx.spec
    if spec.hyperparameters.parallel == "fsdp" and ctx.d.distributed:
        raise ValueError("the lora recipe replicates its frozen base on every process: use parallel 'ddp'")
    s = lm_setup(ctx, detect_kind(spec.data.train, spec.data.text_field), trainable_fraction=0.05)
    s.model = add_adapters(s.model, spec.lora or LoraSpec())
    trainable = sum(p.numel() for p in s.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in s.model.parameters())
    ctx.sink.message(f"LoRA: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")
    s.trainable_fraction = trainable / total

    def export(model: torch.nn.Module, state_dict: dict, folder: Path) -> None:
        if spec.merge_lora:
            model.merge_and_unload().save_pretrained(folder, safe_serialization=True)
        else:  # adapter_model.safetensors + adapter_config.json, pointing at the base by path
            model.save_pretrained(folder, safe_serialization=True)

    s.export = export
    s.extra_llmsvc = {"adapter": not spec.merge_lora, "lora": (spec.lora or LoraSpec()).model_dump()}
    return s
