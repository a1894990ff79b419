"""``pretrain``: next-token prediction on every token of packed text documents."""

from __future__ import annotations

from .common import JobContext, Setup, lm_setup


def setup(ctx: JobContext) -> Setup:
    return lm_setup(ctx, "text")
