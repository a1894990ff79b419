"""Probe what tiny-chat can learn of one task in a few minutes: the recipe's data, model, optimizer and held-out
grading, in a bare loop that also reports the loss on the answer tokens of one kind (the cities of the table
look-up by default), so a run shows whether that answer left chance (ln 3 for a three-row table).

    .venv/bin/python -m bench.tiny_chat_probe --tasks table --examples 40000 --steps 400
    .venv/bin/python -m bench.tiny_chat_probe --tasks table --examples 40000 --steps 800 --induction-steps 400
    .venv/bin/python -m bench.tiny_chat_probe --tasks count --examples 40000 --steps 600 --watch digits [--bare-answers]

``--induction-steps N`` trains the first N steps on copying drills only (the recipe's lead-in,
``synthetic.induction_windows``: runs of the tables' name and city tokens, each repeated once, the loss on the
repeat), on which a model forms induction heads (copy what followed the last time this token occurred).
``--induction F`` instead gives a fraction F of every batch to those drills. ``--prompt-loss W`` also trains on
the prompt tokens (weight W). ``--bare-answers`` makes arithmetic and counting answer with the result alone (the
format before session 16, which a model this small did not learn; see ``synthetic.columns``), and
``--show-wrong`` prints the misses. Not the build (``bench.train_tiny_chat`` is): no checkpoints, no export, one
process.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainer.data import synthetic
from trainer.data.chat import encode_chat
from trainer.data.tokenizer import byte_tokenizer, special_ids
from trainer.model import PRESETS, build_model, llama_config
from trainer.optim import build_optimizer
from trainer.recipes.tiny_chat import answer_items
from trainer.spec import TINY_CHAT_HYPERPARAMETERS as HP
from trainer.spec import Hyperparameters


def windows(tok, n: int, seed: int, tasks: list[str] | None, width: int, prompt_loss: float):
    """Conversations packed whole into windows of ``width`` tokens: (ids, position ids, target weights, answer
    targets), the last marking the assistant's tokens whatever the prompt's weight."""
    pad, out, cur, seen = tok.pad_token_id, [], None, set()

    def close():
        ids, pos, wt, ans = cur
        k = width - len(ids)
        out.append((ids + [pad] * k, pos + list(range(k)), wt + [0.0] * k, ans + [False] * k))

    for it in synthetic.items(n, seed, tasks):
        seen.add(it["prompt"])
        rec = synthetic.record(it)
        ids, mask = encode_chat(tok, rec["messages"], rec.get("tools"))
        ids, mask = ids[:width], mask[:width]
        wt = [0.0] + [1.0 if m else prompt_loss for m in mask[1:]]
        if cur is None or len(cur[0]) + len(ids) > width:
            if cur is not None:
                close()
            cur = ([], [], [], [])
        cur[0].extend(ids), cur[1].extend(range(len(ids))), cur[2].extend(wt)
        cur[3].extend([False] + [bool(m) for m in mask[1:]])
    if cur is not None:
        close()
    random.Random(seed).shuffle(out)
    return [torch.tensor(col) for col in zip(*out, strict=True)], seen


@torch.no_grad()
def mimetic_init(model: torch.nn.Module, scale: float) -> None:
    """Each query head starts as ``scale`` times its key/value group's key head, so a head's first scores are
    ``scale · k(x) · k(y)``: attention to similar tokens from the start (after Trockman and Kolter's mimetic
    initialization of self-attention), the match a look-up needs."""
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    for layer in model.model.layers:
        q, k = layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight
        for h in range(cfg.num_attention_heads):
            g = h // group
            q[h * hd:(h + 1) * hd] = scale * k[g * hd:(g + 1) * hd]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", help="comma-separated tasks (default: all)")
    ap.add_argument("--examples", type=int, default=40_000)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=HP["batch_size"])
    ap.add_argument("--lr", type=float, default=HP["lr"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw")
    ap.add_argument("--muon-lr", type=float, default=HP["muon_lr"])
    ap.add_argument("--muon-attention-lr", type=float, default=HP["muon_attention_lr"])
    ap.add_argument("--prompt-loss", type=float, default=0.0)
    ap.add_argument("--induction", type=float, default=0.0)
    ap.add_argument("--induction-steps", type=int, default=0,
                    help="the first N steps train on induction windows only (a curriculum: the heads form first)")
    ap.add_argument("--mimetic", type=float, default=0.0,
                    help="start each query head as its key head times this (attention to similar tokens at init)")
    ap.add_argument("--watch", default="cities", choices=["cities", "digits"],
                    help="the answer tokens whose loss is reported")
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--bare-answers", action="store_true",
                    help="arithmetic and counting answer with the bare result, as before session 16 (no work shown)")
    ap.add_argument("--show-wrong", action="store_true", help="print each held-out prompt answered wrong")
    a = ap.parse_args()
    if a.bare_answers:  # arithmetic() and count() look these up when they run
        synthetic.columns = lambda x, op, y: str(x + y if op == "+" else x - y)
        synthetic.running_count = lambda text, letter: str(text.count(letter))
    t0, width = time.time(), HP["seq_len"] + 1
    tasks = a.tasks.split(",") if a.tasks else None
    tok = byte_tokenizer(list(synthetic.TOKEN_WORDS))
    (ids, pos, wts, ans), seen = windows(tok, a.examples, a.seed, tasks, width, a.prompt_loss)
    print(f"{len(ids)} windows of {width} tokens in {time.time() - t0:.0f} s", flush=True)
    sp = special_ids(tok)
    model = build_model(llama_config(PRESETS["tiny"], len(tok), bos=sp["bos"], eos=sp["eos"], pad=sp["pad"],
                                     seq_len=HP["seq_len"]), a.seed)
    if a.mimetic:
        mimetic_init(model, a.mimetic)
    opt = build_optimizer(model, Hyperparameters(lr=a.lr, weight_decay=HP["weight_decay"], optimizer=a.optimizer,
                                                 muon_lr=a.muon_lr, muon_attention_lr=a.muon_attention_lr))
    warm = HP["warmup_steps"]

    def factor(s: int) -> float:
        if s < warm:
            return (s + 1) / (warm + 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, a.steps - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    words = synthetic.TABLE_CITIES if a.watch == "cities" else list("0123456789")
    watched = torch.tensor([tok.convert_tokens_to_ids(w) for w in words])
    n_drills = a.induction_steps * a.batch_size + (a.steps - a.induction_steps) * round(a.batch_size * a.induction)
    drills = iter(synthetic.induction_windows(tok, max(0, n_drills), width, a.seed))
    rng, order, at = random.Random(a.seed), list(range(len(ids))), 0
    n_mix = round(a.batch_size * a.induction)
    sums = [0.0, 0.0, 0.0]

    def evaluate() -> str:
        items = synthetic.held_out(40, a.seed, seen, tasks)
        replies = answer_items(model, tok, items)
        scores = synthetic.grade(items, replies)
        for item, reply in zip(items, replies, strict=True):
            if a.show_wrong and not synthetic.correct(item, reply):
                print(f"  wrong: {item['prompt']!r} -> {reply!r} (want {item['answer']!r})")
        model.train()
        return "  ".join(f"{k.removeprefix('accuracy_')} {v:.1%}" for k, v in scores.items())

    print(f"{'step':>6} {'answer loss':>11} {a.watch + ' loss':>12} {'induction loss':>14} {'s':>5} {'load':>5}")
    model.train()
    for step in range(a.steps):
        if at + a.batch_size > len(order):
            rng.shuffle(order)
            at = 0
        b = order[at:at + a.batch_size]
        at += a.batch_size
        x, p, w, is_ans = ids[b], pos[b], wts[b], ans[b]
        n_ind = a.batch_size if step < a.induction_steps else n_mix
        if n_ind:
            rows = [next(drills) for _ in range(n_ind)]
            ix, iw, ip = (torch.from_numpy(np.stack(c)) for c in zip(*rows, strict=True))
            iw = iw.float()
            x, p, w = (torch.cat([t[n_ind:], i]) for t, i in ((x, ix), (p, ip), (w, iw)))
            is_ans = torch.cat([is_ans[n_ind:], torch.zeros_like(is_ans[:n_ind])])
        logits = model(input_ids=x[:, :-1], position_ids=p[:, :-1], use_cache=False).logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="none").view(x.size(0), -1)
        w = w[:, 1:]
        task_rows = torch.arange(x.size(0)) < x.size(0) - n_ind
        loss = (ce * w).sum() / (w == 1.0).sum().clamp(min=1)
        answers = is_ans[:, 1:] & task_rows[:, None]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            mine = answers & torch.isin(x[:, 1:], watched)
            sums[0] += ce[answers].mean().item()
            sums[1] += ce[mine].mean().item() if mine.any() else 0.0
            sums[2] += ce[(w == 1.0) & ~task_rows[:, None]].mean().item() if n_ind else 0.0
        if (step + 1) % 100 == 0:
            print(f"{step + 1:>6} {sums[0] / 100:>11.3f} {sums[1] / 100:>12.3f} {sums[2] / 100:>14.3f} "
                  f"{time.time() - t0:>5.0f} {os.getloadavg()[0]:>5.1f}", flush=True)
            sums = [0.0, 0.0, 0.0]
        if a.eval_every and (step + 1) % a.eval_every == 0 and step + 1 < a.steps:
            print(f"  held-out at step {step + 1}: {evaluate()}", flush=True)
    print(f"held-out after {a.steps} steps: {evaluate()}  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
