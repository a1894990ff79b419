"""Overhead of the full llmsvc path (gateway → auth → router → worker) against ``vllm serve`` of the
same model, measured in one run by vLLM's own benchmark client, sides alternating round by round.

    .venv/bin/python -m bench.serve_overhead --rounds 3 --num-prompts 200 --concurrency 16

Both servers run the same engine settings (enforce-eager, prefix caching, 64 sequences, 1 GiB KV
cache) on the same cores; each round runs one side then the other (the order flips every round)
so drift in a noisy machine hits both. Prints one row per run and the median ratios.
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
from pathlib import Path

from bench.serve_lib import default_model, median, start_vllm_server, stop, table, vllm_bench, wait_models
from services.cli.stack import Stack, StackConfig, free_port

MODEL_NAME = "tiny-random"


def bench_args(a, seed: int, num_prompts: int) -> list[str]:
    return ["--dataset-name", "random", "--random-input-len", str(a.input_len), "--random-output-len",
            str(a.output_len), "--num-prompts", str(num_prompts), "--max-concurrency", str(a.concurrency),
            "--ignore-eos", "--seed", str(seed)]


def row(side: str, rnd: int, r: dict) -> list:
    return [rnd, side, r["completed"], r["failed"], r["output_throughput"], r["p50_ttft_ms"], r["p99_ttft_ms"],
            r["p50_itl_ms"], r["p99_itl_ms"]]


def run(a) -> None:
    model = default_model()
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-"))
    key = "sk-bench-" + secrets.token_hex(8)
    vllm_port = free_port()
    vllm_proc = start_vllm_server(model, vllm_port, MODEL_NAME, home / "vllm.log")
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name=MODEL_NAME, log_level="WARNING"))
    stack.start()
    sides = {"vllm": (f"http://127.0.0.1:{vllm_port}", ""),
             "llmsvc": (stack.cfg.base_url.removesuffix("/v1"), key)}
    try:
        wait_models(sides["vllm"][0], proc=vllm_proc)
        stack.wait_ready(timeout_s=300)
        for side, (url, k) in sides.items():  # warm-up: first requests compile and allocate
            vllm_bench(url, MODEL_NAME, model, bench_args(a, 0, 2 * a.concurrency), k)
        rows, results = [], {s: [] for s in sides}
        for rnd in range(1, a.rounds + 1):
            order = list(sides) if rnd % 2 else list(sides)[::-1]
            for side in order:
                url, k = sides[side]
                r = vllm_bench(url, MODEL_NAME, model, bench_args(a, rnd, a.num_prompts), k)
                results[side].append(r)
                rows.append(row(side, rnd, r))
        print(table(["round", "side", "ok", "failed", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
                     "ITL p50 ms", "ITL p99 ms"], rows))
        print()
        print(summary(results))
    finally:
        stack.stop()
        stop(vllm_proc)


def summary(results: dict[str, list[dict]]) -> str:
    pairs = list(zip(results["vllm"], results["llmsvc"]))
    ratio = [b["output_throughput"] / v["output_throughput"] for v, b in pairs]
    d_ttft50 = [b["p50_ttft_ms"] - v["p50_ttft_ms"] for v, b in pairs]
    d_ttft99 = [b["p99_ttft_ms"] - v["p99_ttft_ms"] for v, b in pairs]
    d_itl50 = [b["p50_itl_ms"] - v["p50_itl_ms"] for v, b in pairs]
    return table(["llmsvc vs vllm (per round, then median)", "throughput ×", "Δ TTFT p50 ms", "Δ TTFT p99 ms",
                  "Δ ITL p50 ms"],
                 [[f"round {i + 1}", ratio[i], d_ttft50[i], d_ttft99[i], d_itl50[i]] for i in range(len(pairs))]
                 + [["median", median(ratio), median(d_ttft50), median(d_ttft99), median(d_itl50)]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    run(p.parse_args())


if __name__ == "__main__":
    main()
