"""``sft``: supervised fine-tuning on conversations, with the loss on assistant tokens only.

Conversations are rendered with the tokenizer's chat template (the one the
exported model carries), packed whole into windows, and attend only within
themselves.
"""

from __future__ import annotations

from .common import JobContext, Setup, lm_setup


def setup(ctx: JobContext) -> Setup:
    return lm_setup(ctx, "chat")
