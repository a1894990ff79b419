"""Build the tiny-chat default model as ``llmsvc up`` does, timed, and print its held-out accuracy.

    .venv/bin/python -m bench.train_tiny_chat [--out /tmp/tiny-chat] [--seed S] [--steps N] [--examples N]
                                              [--batch-size N] [--lr X] [--tasks tool_math,tool_city,tool_direct]
                                              [--induction-steps N] [--[no-]compile]
                                              [--optimizer adamw|muon] [--muon-lr X] [--muon-attention-lr X]

Prints elapsed time and the load average every 100 steps (the machine is
shared, so the load says how much of the two cores the build actually got),
then the metrics the build recorded in ``llmsvc.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="where to write the model (default: a temporary folder, removed)")
    p.add_argument("--steps", type=int, help="override the recipe's optimizer steps")
    p.add_argument("--examples", type=int, help="override the number of synthetic conversations")
    p.add_argument("--batch-size", type=int, help="override the recipe's sequences per optimizer step")
    p.add_argument("--lr", type=float, help="override the recipe's peak learning rate")
    p.add_argument("--seed", type=int, default=0, help="data, initialisation and order seed (default 0)")
    p.add_argument("--tasks", help="comma-separated subset of tasks (default: all)")
    p.add_argument("--induction-steps", type=int, help="override the recipe's steps of copying drills")
    p.add_argument("--optimizer", choices=["adamw", "muon"], help="override the recipe's optimizer")
    p.add_argument("--muon-lr", type=float, help="override the recipe's Muon learning rate")
    p.add_argument("--muon-attention-lr", type=float, help="override the recipe's Muon rate for attention")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile each decoder layer")
    args = p.parse_args()

    t0 = time.time()
    import trainer

    trainer.claim_the_cores()  # as llmsvc up does for its first-run build
    from trainer.tiny_chat import build

    overrides: dict = {}
    for key in ("steps", "batch_size", "lr", "optimizer", "muon_lr", "muon_attention_lr"):
        if getattr(args, key):
            overrides.setdefault("hyperparameters", {})[key] = getattr(args, key)
    if args.compile is not None:
        overrides.setdefault("hyperparameters", {})["compile"] = args.compile
    if args.examples:
        overrides.setdefault("tiny_chat", {})["examples"] = args.examples
    if args.tasks:
        overrides.setdefault("tiny_chat", {})["tasks"] = args.tasks.split(",")
    if args.induction_steps is not None:
        overrides.setdefault("tiny_chat", {})["induction_steps"] = args.induction_steps
    tmp = None if args.out else tempfile.mkdtemp()
    out = Path(args.out or tmp) / "tiny-chat" if not args.out else Path(args.out)
    loads: list[float] = []
    last = [-100]

    def progress(step: int, total: int, label: str) -> None:
        if step - last[0] >= 100 or step == total:
            last[0] = step
            loads.append(os.getloadavg()[0])
            print(f"{time.time() - t0:7.1f}s  load {loads[-1]:5.1f}  {step}/{total}  {label}", flush=True)

    try:
        build(out, progress=progress, seed=args.seed, overrides=overrides)
        meta = json.loads((out / "llmsvc.json").read_text())
        print(f"\nwall time {time.time() - t0:.0f} s (imports, data, training, held-out eval, export); "
              f"mean load average {sum(loads) / len(loads):.1f} on {os.cpu_count()} cores")
        print(json.dumps(meta["metrics"], indent=1))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
