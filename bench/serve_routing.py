"""Routing policies on a shared-prefix workload: 2 workers behind one router, vLLM's benchmark client.

    .venv/bin/python -m bench.serve_routing --model-size small --rounds 3 --num-prompts 384 --concurrency 16 \
        --num-prefixes 48 --prefix-len 896 --kv-blocks 240

(docs/benchmarks.md, run M: 48 system prompts of 7 blocks fit in 240 blocks per worker when the workers
split them, and do not when every worker must hold them all.)

The workload is vLLM's ``prefix_repetition`` dataset: a few long common prefixes (system prompts)
shared by many requests with distinct suffixes. Each run restarts only the router with the next
policy; the workers and their prefix caches stay, so every run draws fresh prefixes (its own seed)
and finds nothing useful cached from earlier runs. The prefix-cache hit rate is vLLM's own
(hits / queried prompt tokens, from the workers' counters) over that run alone.

``--output-len-spread S`` gives each request its own output length, uniform in ``output-len ± S``, so that
requests that start together do not all finish together. vLLM's ``prefix_repetition`` dataset has one
output length for all, so the same workload (prefixes and suffixes of random tokens) is then written as a
JSONL file for vLLM's ``custom`` dataset, which takes each request's ``output_tokens``.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import tempfile
from pathlib import Path

from bench.serve_lib import default_model, median, scrape, table, vllm_bench
from services.cli.stack import Stack, StackConfig, free_port

MODEL_NAME = "tiny-random"
POLICIES = ["kv_aware", "prefix_aware", "round_robin", "least_load"]


def spread_dataset(a, tokenizer, seed: int, path: Path) -> Path:
    """The prefix-repetition workload with per-request output lengths, as a JSONL file for the custom dataset."""
    from vllm.benchmarks.datasets.datasets import gen_prompt_decode_to_target_len

    rng = random.Random(seed)
    vocab = tokenizer.vocab_size

    def tokens(n: int) -> list[int]:
        """``n`` random tokens that decode and re-encode to ``n`` tokens, as vLLM's datasets make them."""
        return gen_prompt_decode_to_target_len(tokenizer, [rng.randrange(vocab) for _ in range(n)], n)[1]

    rows = []
    per_prefix = max(1, a.num_prompts // a.num_prefixes)
    for _ in range(a.num_prefixes):
        prefix = tokens(a.prefix_len)
        for _ in range(per_prefix):
            out = rng.randint(max(1, a.output_len - a.output_len_spread), a.output_len + a.output_len_spread)
            rows.append({"prompt": tokenizer.decode(prefix + tokens(a.suffix_len)), "output_tokens": out})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bench_args(a, seed: int, tokenizer=None, home: Path | None = None) -> list[str]:
    common = ["--num-prompts", str(a.num_prompts), "--max-concurrency", str(a.concurrency), "--ignore-eos",
              "--seed", str(seed)]
    if a.output_len_spread:
        data = spread_dataset(a, tokenizer, seed, home / f"workload-{seed}.jsonl")
        return ["--dataset-name", "custom", "--dataset-path", str(data), "--custom-output-len", "-1",
                "--skip-chat-template", *common]
    return ["--dataset-name", "prefix_repetition", "--prefix-repetition-prefix-len", str(a.prefix_len),
            "--prefix-repetition-suffix-len", str(a.suffix_len), "--prefix-repetition-num-prefixes",
            str(a.num_prefixes), "--prefix-repetition-output-len", str(a.output_len), *common]


def prefix_counters(stack: Stack) -> tuple[float, float]:
    """(queried, hit) prompt tokens summed over the workers, from their /metrics."""
    queried = hit = 0.0
    for i in range(len(stack.cfg.worker_ports)):
        url = f"http://127.0.0.1:{stack.cfg.metrics_ports[f'worker{i}']}/metrics"
        queried += sum(scrape(url, "llmsvc_worker_prefix_cache_queries_total").values())
        hit += sum(scrape(url, "llmsvc_worker_prefix_cache_hits_total").values())
    return queried, hit


def decisions(stack: Stack) -> str:
    """The router's decision outcomes since it started (one router per run), e.g. "hit 290, miss 30"."""
    url = f"http://127.0.0.1:{stack.cfg.metrics_ports['router']}/metrics"
    by_outcome: dict[str, float] = {}
    for labels, v in scrape(url, "llmsvc_router_decisions_total").items():
        outcome = labels.split('outcome="')[1].split('"')[0]
        by_outcome[outcome] = by_outcome.get(outcome, 0) + v
    return ", ".join(f"{k} {int(v)}" for k, v in sorted(by_outcome.items(), key=lambda kv: -kv[1]))


def restart_router(stack: Stack, policy: str) -> None:
    stack.stop_proc("router")
    stack.cfg.extra_env["LLMSVC_ROUTER_POLICY"] = policy
    stack.spawn("router", "services.router.main", stack.env_for("router"))
    stack.wait_ready(timeout_s=120)


def run(a) -> None:
    model = default_model(a.model_size)
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-"))
    key = "sk-bench-" + secrets.token_hex(8)
    # A KV cache that holds about half the prefixes per worker (128-token blocks on CPU): a policy that
    # spreads every prefix over every worker makes both caches evict; one that partitions them does not.
    engine = {"LLMSVC_WORKER_ENGINE_ARGS": json.dumps({"num_gpu_blocks_override": a.kv_blocks})} if a.kv_blocks else {}
    engine["LLMSVC_WORKER_ENABLE_LORA"] = "false"  # as in the earlier routing runs: policies, not LoRA's cost
    cfg = StackConfig.ephemeral(home, model, key, workers=2, served_model_name=MODEL_NAME, log_level="WARNING",
                                extra_env=engine)
    cfg.metrics_ports = {"worker0": free_port(), "worker1": free_port(), "router": free_port()}
    stack = Stack(cfg)
    stack.start()
    url = cfg.base_url.removesuffix("/v1")
    policies = a.policies
    rows, by_policy = [], {p: [] for p in policies}
    try:
        stack.wait_ready(timeout_s=300)
        restart_router(stack, policies[0])
        tokenizer = None
        if a.output_len_spread:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model)
        vllm_bench(url, MODEL_NAME, model, bench_args(a, 1000, tokenizer, home), key)  # warm-up (compiles, allocates)
        for rnd in range(1, a.rounds + 1):
            shift = (rnd - 1) % len(policies)  # rotate the order so drift in a shared machine hits every policy
            for j, policy in enumerate(policies[shift:] + policies[:shift]):
                restart_router(stack, policy)
                before = prefix_counters(stack)
                r = vllm_bench(url, MODEL_NAME, model, bench_args(a, rnd * 10 + j, tokenizer, home), key)
                after = prefix_counters(stack)
                hit_rate = (after[1] - before[1]) / max(1.0, after[0] - before[0])
                by_policy[policy].append((r, hit_rate))
                rows.append([rnd, policy, r["completed"], r["failed"], r["output_throughput"], r["p50_ttft_ms"],
                             r["p99_ttft_ms"], hit_rate, decisions(stack)])
        print(table(["round", "policy", "ok", "failed", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
                     "prefix hit rate", "router decisions"], rows))
        print()
        print(table(["policy (median of rounds)", "output tok/s", "TTFT p50 ms", "TTFT p99 ms", "prefix hit rate"],
                    [[p, median([r["output_throughput"] for r, _ in v]), median([r["p50_ttft_ms"] for r, _ in v]),
                      median([r["p99_ttft_ms"] for r, _ in v]), median([h for _, h in v])]
                     for p, v in by_policy.items()]))
    finally:
        stack.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model-size", choices=["tiny", "small"], default="tiny",
                   help="random Llama served: tiny (3.5M, the default model) or small (10M, prefill costs more)")
    p.add_argument("--policies", type=lambda v: v.split(","), default=POLICIES,
                   help=f"comma-separated, from {','.join(POLICIES)} (default: all)")
    p.add_argument("--num-prompts", type=int, default=160)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prefix-len", type=int, default=512)
    p.add_argument("--suffix-len", type=int, default=64)
    p.add_argument("--num-prefixes", type=int, default=20)
    p.add_argument("--kv-blocks", type=int, default=96, help="KV-cache blocks per worker (0: vLLM's default)")
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--output-len-spread", type=int, default=0,
                   help="each request's output length is uniform in output-len ± this (0: all the same)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
