"""Recipes: each turns a spec into a :class:`~trainer.recipes.common.Setup` the loop can train."""

from __future__ import annotations

import importlib

from .common import JobContext, Setup

RECIPES = {"pretrain": "pretrain", "sft": "sft", "lora": "lora", "dpo": "dpo", "tiny-chat": "tiny_chat"}


def setup(name: str, ctx: JobContext) -> Setup:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return importlib.import_module(f"{__name__}.{RECIPES[name]}").setup(ctx)
