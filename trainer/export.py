"""The job's product: a Hugging Face model directory, published atomically, with ``llmsvc.json``.

Everything is written to ``<output_dir>.tmp`` and renamed into place at the
end, so ``output_dir`` either does not exist or holds a complete model: the
control plane may register whatever it finds there.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch


def tmp_path(output_dir: str | Path) -> Path:
    out = Path(output_dir)
    return out.with_name(out.name + ".tmp")


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Tokenizer files, with the chat template both in tokenizer_config.json and as chat_template.jinja."""
    tokenizer.save_pretrained(folder)
    template = tokenizer.chat_template
    if isinstance(template, str):
        cfg_path = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["chat_template"] = template
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
        jinja = folder / "chat_template.jinja"
        if not jinja.exists():
            jinja.write_text(template)


def save_generation_config(model: torch.nn.Module, parent: str | None, folder: Path) -> None:
    from transformers import GenerationConfig

    if parent:
        try:
            GenerationConfig.from_pretrained(parent).save_pretrained(folder)
            return
        except OSError:
            pass
    c = model.config
    GenerationConfig(bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
                     pad_token_id=c.pad_token_id).save_pretrained(folder)


def publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames only: no reader ever sees a partial directory at ``out``."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def write_model_dir(*, output_dir: str | Path, setup, state_dict: dict, llmsvc: dict) -> Path:
    """Rank 0 only. ``setup`` is the recipe's :class:`~trainer.recipes.common.Setup`."""
    out = Path(output_dir)
    tmp = tmp_path(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config_model = setup.model.get_base_model() if hasattr(setup.model, "get_base_model") else setup.model
    save_generation_config(config_model, setup.parent, tmp)  # before export: a LoRA merge replaces the model
    setup.export(setup.model, state_dict, tmp)
    save_tokenizer(setup.tokenizer, tmp)
    (tmp / "llmsvc.json").write_text(json.dumps({**llmsvc, "created": time.time()}, indent=2))
    publish(tmp, out)
    return out
