"""Training throughput of the tiny-chat recipe: our loop vs a plain Hugging Face ``Trainer``.

    .venv/bin/python -m bench.train_throughput --steps 60 --rounds 3

Both sides train the same model (the ``tiny`` preset with the byte tokenizer,
same seed) on the same data (the tiny-chat synthetic corpus, packed into the
same windows with per-document position ids), with the same batch, schedule,
AdamW settings and clipping, in the same process and thread count. Rounds
alternate the order, so load from other processes on a shared machine hits
both sides alike; the table reports the median of each side and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trainer  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
# torch must load after ``trainer`` (above): import sorting would otherwise move it first.
import torch


def prepare(work: Path, examples: int, seq_len: int):
    from trainer.data import synthetic
    from trainer.data.pipeline import prepare as prepare_data
    from trainer.spec import parse_spec

    spec = parse_spec({"recipe": "tiny-chat", "output_dir": str(work / "out"), "tiny_chat": {"examples": examples},
                       "hyperparameters": {"seq_len": seq_len}})
    corpus = work / "chat.jsonl"
    synthetic.write_corpus(corpus, examples, seed=0)
    return spec, prepare_data(str(corpus), spec.data, "chat", work / "data", seq_len=seq_len, show=False)


def fresh_model(spec, tokenizer):
    from trainer.data.tokenizer import special_ids
    from trainer.model import build_model, get_preset, llama_config

    ids = special_ids(tokenizer)
    cfg = llama_config(get_preset(spec.model.preset), len(tokenizer), bos=ids["bos"], eos=ids["eos"],
                       pad=ids["pad"], seq_len=spec.hyperparameters.seq_len)
    cfg.use_cache = False  # training: no KV cache (and packed-sequence masks apply on both sides)
    return build_model(cfg, spec.hyperparameters.seed)


def run_ours(spec, prepared, steps: int) -> float:
    """Tokens/s of trainer.loop.Trainer (the code every recipe runs)."""
    from trainer.batches import WindowBatches
    from trainer.data.pack import PackedData
    from trainer.events import EventSink
    from trainer.loop import LoopConfig, Trainer
    from trainer.objectives import lm_loss
    from trainer.optim import build_optimizer, build_scheduler
    from trainer.parallelize import Dist

    hp = spec.hyperparameters.model_copy(update={"steps": steps})
    model = fresh_model(spec, prepared.tokenizer)
    opt = build_optimizer(model, hp)
    cfg = LoopConfig(steps=steps, global_batch=hp.batch_size, seq_len=hp.seq_len, seed=hp.seed, log_every=10**9)
    loop = Trainer(cfg, model=model, optimizer=opt, scheduler=build_scheduler(opt, hp),
                   batches=WindowBatches(PackedData(prepared.folder, hp.seq_len + 1)), objective=lm_loss, d=Dist(),
                   sink=EventSink(enabled=False))
    t0 = time.perf_counter()
    result = loop.run()
    return result.tokens / (time.perf_counter() - t0)


class HFWindows(torch.utils.data.Dataset):
    """The same windows in transformers' convention: labels unshifted (the model shifts them)."""

    def __init__(self, folder: Path, seq_len: int) -> None:
        from trainer.data.pack import PackedData

        self.data = PackedData(folder, seq_len + 1)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tokens, mask, positions = (torch.from_numpy(a) for a in self.data.get(i))
        ids, mask, positions = tokens[:-1], mask[:-1], positions[:-1]
        labels = torch.where((mask > 0) & (positions > 0), ids, torch.full_like(ids, -100))
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


def run_hf(spec, prepared, steps: int, out: Path) -> float:
    """Tokens/s of a plain transformers.Trainer with the same hyperparameters."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    hp = spec.hyperparameters
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=hp.batch_size, learning_rate=hp.lr,
        lr_scheduler_type="cosine", warmup_steps=hp.warmup_steps, weight_decay=hp.weight_decay,
        adam_beta1=hp.betas[0], adam_beta2=hp.betas[1], max_grad_norm=hp.grad_clip, use_cpu=True,
        logging_steps=10**9, save_strategy="no", report_to=[], dataloader_num_workers=0, seed=hp.seed,
        disable_tqdm=True,
    )
    hf = Trainer(model=fresh_model(spec, prepared.tokenizer), args=args,
                 train_dataset=HFWindows(prepared.folder, hp.seq_len), data_collator=default_data_collator)
    t0 = time.perf_counter()
    hf.train()
    return steps * hp.batch_size * hp.seq_len / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps a run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--examples", type=int, default=20_000, help="synthetic conversations to pack")
    p.add_argument("--seq-len", type=int, default=None, help="default: the tiny-chat recipe's")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from trainer.spec import TINY_CHAT_HYPERPARAMETERS

        spec, prepared = prepare(work, args.examples, args.seq_len or TINY_CHAT_HYPERPARAMETERS["seq_len"])
        hp = spec.hyperparameters
        print(f"model: tiny preset, batch {hp.batch_size} x {hp.seq_len} tokens, {args.steps} steps a run, "
              f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
        ours, theirs = [], []
        for r in range(args.rounds):
            order = [("ours", ours), ("hf", theirs)] if r % 2 == 0 else [("hf", theirs), ("ours", ours)]
            for name, sink in order:
                tps = run_ours(spec, prepared, args.steps) if name == "ours" else \
                    run_hf(spec, prepared, args.steps, work / "hf")
                sink.append(tps)
                print(f"round {r + 1} {name:4s} {tps:9.0f} tokens/s", flush=True)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"\n| implementation | tokens/s (median of {args.rounds}) | runs |")
        print("| --- | --- | --- |")
        print(f"| llmsvc trainer (tiny-chat loop) | {a:,.0f} | {', '.join(f'{x:,.0f}' for x in ours)} |")
        print(f"| transformers.Trainer | {b:,.0f} | {', '.join(f'{x:,.0f}' for x in theirs)} |")
        print(f"\nratio llmsvc / transformers.Trainer: {a / b:.2f}x  (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
