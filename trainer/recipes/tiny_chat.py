"""``tiny-chat``: the default model. A small Llama trained from scratch on the synthetic chat corpus.

It is the ``sft`` recipe on generated data, with a byte tokenizer (every digit
and letter its own token, which reversal, sorting and counting need) and
hyperparameters tuned to finish in a few minutes on two CPU cores. Its first
steps are copying drills that form induction heads (see ``synthetic.TABLE_SEP``). After
training it answers held-out prompts greedily through its chat template and
records the accuracy in ``llmsvc.json``: with tools offered, a call must be
exactly the right call, and the answer after the tool's real result exact too.
Its tool calls are Hermes-style, so ``llmsvc.json`` names vLLM's ``hermes`` tool parser.
"""

from __future__ import annotations

import hashlib

import torch

from ..batches import LeadInBatches
from ..data import synthetic
from .common import JobContext, Setup, lm_setup


@torch.no_grad()
def greedy_replies(model: torch.nn.Module, tokenizer, conversations: list, max_new_tokens: int = 48,
                   batch_size: int = 64) -> list[str]:
    """Greedy decoding through the chat template (what a served model sees), in left-padded batches.

    Each conversation is a prompt string (one user turn) or ``(messages, tools)``.
    """
    model.eval()
    device = next(model.parameters()).device
    stop = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", tokenizer.eos_token)]
    pad = tokenizer.pad_token_id
    prompts = []
    for c in conversations:
        messages, tools = ([{"role": "user", "content": c}], None) if isinstance(c, str) else c
        prompts.append(list(tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                                          tokenize=True, return_dict=False)))
    replies = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        width = max(map(len, chunk))
        x = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        out = model.generate(x, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=stop, pad_token_id=pad)
        for row in out[:, width:].tolist():
            ends = [k for k, t in enumerate(row) if t in stop]
            replies.append(tokenizer.decode(row[:ends[0]] if ends else row, skip_special_tokens=True))
    return replies


def answer_items(model: torch.nn.Module, tokenizer, items: list[dict]) -> list:
    """Replies to held-out items as :func:`synthetic.grade` takes them: a string, or for an item that should
    call a tool, (first reply, reply after the real tool result is appended)."""
    first = greedy_replies(model, tokenizer, [([{"role": "user", "content": i["prompt"]}],
                                               synthetic.tool_specs(i["tools"])) for i in items])
    calls = [k for k, i in enumerate(items) if i["call"] is not None]
    second = greedy_replies(model, tokenizer, [(
        [{"role": "user", "content": items[k]["prompt"]}, synthetic.call_message(items[k]["call"]),
         {"role": "tool", "tool_call_id": "call_1", "content": items[k]["result"]}],
        synthetic.tool_specs(items[k]["tools"])) for k in calls])
    replies: list = list(first)
    for k, final in zip(calls, second, strict=True):
        replies[k] = (first[k], final)
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
    hp = spec.hyperparameters
    lead_steps = min(tc.induction_steps, hp.steps // 4)
    if lead_steps:
        s.train = LeadInBatches(s.train, synthetic.induction_windows(
            s.tokenizer, lead_steps * hp.batch_size, hp.seq_len + 1, seed))
        ctx.sink.message(f"the first {lead_steps} steps are copying drills (induction heads for the table look-up)")

    def after_training(model: torch.nn.Module) -> dict:
        if tc.eval_per_task == 0:
            return {}
        train_prompts = {p for _, p, _ in synthetic.examples(tc.examples, seed, tc.tasks)}
        items = synthetic.held_out(tc.eval_per_task, seed, train_prompts, tc.tasks)
        scores = synthetic.grade(items, answer_items(model, s.tokenizer, items))
        ctx.sink.message(f"held-out accuracy: {scores}")
        return {k: round(v, 4) for k, v in scores.items()}

    s.after_training = after_training
    s.extra_llmsvc = {"tool_parser": "hermes"}
    return s
