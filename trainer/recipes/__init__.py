"""Recipes: each turns a spec into a :class:`~trainer.recipes.common.Setup` the loop can train."""

from __future__ import annotations

import importlib

from ..spec import RECIPES as _NAMES
from .common import JobContext, Setup

RECIPES = {name: name.replace("-", "_") for name in _NAMES}
"""Recipe name → its module here."""


def setup(name: str, ctx: JobContext) -> Setup:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return importlib.import_module(f"{__name__}.{RECIPES[name]}").setup(ctx)
