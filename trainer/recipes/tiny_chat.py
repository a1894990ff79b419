"""``tiny-chat``: the default model. A small Llama trained from scratch on the synthetic chat corpus.

It is the ``sft`` recipe on generated data, with a byte tokenizer (every digit
and letter its own token, which reversal, sorting and counting need) and
hyperparameters tuned to finish in a few minutes on two CPU cores. After
training it answers held-out prompts greedily through its chat template and
records the accuracy in ``llmsvc.json``.
"""

from __future__ import annotations

import hashlib

import torch

from ..data import synthetic
from .common import JobContext, Setup, lm_setup


@torch.no_grad()
def greedy_replies(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy decoding, one prompt at a time, through the chat template (what a served model sees)."""
    model.eval()
    device = next(model.parameters()).device
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", tokenizer.eos_token)]
    replies = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        x = torch.tensor([list(ids)], device=device)
        out = model.generate(x, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id)
        replies.append(tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True))
    return replies


def setup(ctx: JobContext) -> Setup:
    spec = ctx.spec
    tc, seed = spec.tiny_chat, spec.hyperparameters.seed
    tag = hashlib.sha256(f"{tc.examples}-{seed}-{tc.tasks}".encode()).hexdigest()[:12]
    corpus = ctx.work_dir / f"synthetic-{tag}.jsonl"
    if ctx.d.is_main and not corpus.exists():
        tmp = corpus.with_suffix(".tmp")
        synthetic.write_corpus(tmp, tc.examples, seed, tc.tasks)
        tmp.rename(corpus)
        ctx.sink.message(f"generated {tc.examples} synthetic conversations in {corpus}")
    ctx.d.barrier()
    s = lm_setup(ctx, "chat", data_path=str(corpus))

    def after_training(model: torch.nn.Module) -> dict:
        if tc.eval_per_task == 0:
            return {}
        train_prompts = {p for _, p, _ in synthetic.examples(tc.examples, seed, tc.tasks)}
        items = synthetic.held_out(tc.eval_per_task, seed, train_prompts, tc.tasks)
        scores = synthetic.grade(items, greedy_replies(model, s.tokenizer, [i["prompt"] for i in items]))
        ctx.sink.message(f"held-out accuracy: {scores}")
        return {k: round(v, 4) for k, v in scores.items()}

    s.after_training = after_training
    return s
