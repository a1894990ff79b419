"""LoRA serving on one worker: the base model, one adapter, and N adapters in rotation, llmsvc against
``vllm serve --enable-lora`` with the same adapters and limits, all measured by vLLM's own benchmark client.

    .venv/bin/python -m bench.serve_lora --rounds 2 --num-prompts 96 --concurrency 8 --adapters 4

Each round runs every scenario on one side then the other (the order flips every round). The adapters are
random-initialised PEFT adapters of the default tiny model (rank 8 on q/k/v/o), in rotation round-robin.
After the rounds, llmsvc's cold-adapter latency: the first token of a request to an adapter registered but
never used (loaded from the store by that request) against the warm TTFT p50 of the same adapter, serially
on an idle server. Prints one row per run, then the adapter/base throughput ratio of each side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import httpx

from bench.serve_lib import default_model, median, start_vllm_server, stop, table, vllm_bench, wait_models
from services.cli.stack import Stack, StackConfig, free_port
from services.common.db import registry
from services.common.db.engine import make_engine, session_factory
from tests.worker.lora import make_adapter

MODEL_NAME = "tiny-random"
LORA_OFF = "llmsvc, LoRA off"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_limits(a) -> tuple[list[str], dict[str, str]]:
    """The same LoRA limits as ``vllm serve`` flags and as llmsvc worker settings."""
    flags = ["--enable-lora", "--max-loras", str(a.max_loras), "--max-lora-rank", "16",
             "--max-cpu-loras", str(a.max_cpu_loras)]
    env = {"LLMSVC_WORKER_MAX_LORAS": str(a.max_loras), "LLMSVC_WORKER_MAX_LORA_RANK": "16",
           "LLMSVC_WORKER_MAX_CPU_LORAS": str(a.max_cpu_loras), "LLMSVC_WORKER_CPU_NICE": str(a.engine_nice)}
    return flags, env


async def register(db_url: str, adapters: dict[str, Path], base: Path) -> None:
    engine = make_engine(db_url)
    try:
        async with session_factory(engine)() as session:
            for version_id, path in adapters.items():  # a fresh registry: <name>-v1, the id clients send
                row = await registry.register_version(session, version_id.removesuffix("-v1"), str(path),
                                                      parent=str(base), recipe="lora")
                assert row.id == version_id, (row.id, version_id)
    finally:
        await engine.dispose()


def ttft_ms(base_url: str, key: str, model: str) -> float:
    """Time to the first content token of one streamed chat request, in ms."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8,
            "stream": True}
    started = time.perf_counter()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"' in line:
                return (time.perf_counter() - started) * 1e3
    raise RuntimeError(f"no token from {model}")


def scenarios(a, names: list[str]) -> dict[str, list[str]]:
    return {"base": [], "1 adapter": ["--lora-modules", names[0]],
            f"{a.adapters} adapters": ["--lora-modules", *names, "--lora-assignment", "round-robin"]}


def run(a) -> None:
    model = default_model()
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-lora-"))
    key = "sk-bench-" + secrets.token_hex(8)
    print(f"making {a.adapters + a.cold} adapters in {home / 'adapters'}", flush=True)
    # Named by version id on both sides: what clients send (a fine-tune's fine_tuned_model).
    served = {f"lora{i}-v1": make_adapter(model, home / "adapters" / f"lora{i}", targets=TARGETS, seed=i)
              for i in range(a.adapters)}
    cold = {f"cold{i}-v1": make_adapter(model, home / "adapters" / f"cold{i}", targets=TARGETS, seed=100 + i)
            for i in range(a.cold)}
    flags, env = lora_limits(a)
    vllm_port = free_port()
    vllm_proc = start_vllm_server(model, vllm_port, MODEL_NAME, home / "vllm.log",
                                  [*flags, "--lora-modules", *(f"{n}={p}" for n, p in served.items())],
                                  nice=a.engine_nice)
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name=MODEL_NAME, log_level="WARNING",
                                        extra_env=env))
    stack.start()
    sides = {"vllm": (f"http://127.0.0.1:{vllm_port}", ""), "llmsvc": (stack.cfg.base_url.removesuffix("/v1"), key)}
    plain = None
    if a.lora_off_side:  # what LoRA on (the default) costs base-model traffic: the same stack with it off
        off_env = {**env, "LLMSVC_WORKER_ENABLE_LORA": "false"}
        plain = Stack(StackConfig.ephemeral(home / "lora-off", model, key, served_model_name=MODEL_NAME,
                                            log_level="WARNING", extra_env=off_env))
        plain.cfg.home.mkdir()
        plain.start()
        sides[LORA_OFF] = (plain.cfg.base_url.removesuffix("/v1"), key)
    rows, results = [], {}
    try:
        print("starting vllm serve and llmsvc (about a minute)…", flush=True)
        wait_models(sides["vllm"][0], proc=vllm_proc)
        stack.wait_ready(timeout_s=300)
        if plain is not None:
            plain.wait_ready(timeout_s=300)
        asyncio.run(register(stack.cfg.db_url, served | cold, model))
        runs = scenarios(a, list(served))
        for rnd in range(a.rounds):
            order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
            for name, extra in runs.items():
                for side in order:
                    if side == LORA_OFF and name != "base":
                        continue
                    url, api_key = sides[side]
                    args = ["--dataset-name", "random", "--random-input-len", str(a.input_len),
                            "--random-output-len", str(a.output_len), "--num-prompts", str(a.num_prompts),
                            "--max-concurrency", str(a.concurrency), "--ignore-eos", "--seed", str(rnd), *extra]
                    r = vllm_bench(url, MODEL_NAME, model, args, api_key)
                    if r["failed"] or not r["completed"]:
                        raise RuntimeError(f"{side} failed {r['failed']} of {a.num_prompts} requests ({name}); "
                                           f"see the logs in {home}")
                    results.setdefault((side, name), []).append(r["output_throughput"])
                    rows.append([rnd + 1, side, name, r["completed"], r["failed"], r["output_throughput"],
                                 r["p50_ttft_ms"], r["p99_ttft_ms"]])
                    print(f"round {rnd + 1} {side:6s} {name:12s} {r['output_throughput']:8.0f} tok/s "
                          f"TTFT p50 {r['p50_ttft_ms']:6.1f} ms", flush=True)
        url, api_key = sides["llmsvc"]
        cold_rows = []
        for name in cold:
            first = ttft_ms(url, api_key, name)
            warm = median([ttft_ms(url, api_key, name) for _ in range(a.warm_samples)])
            cold_rows.append([name, first, warm, first / warm])
    finally:
        stack.stop()
        if plain is not None:
            plain.stop()
        stop(vllm_proc)
    print("\n" + table(["round", "side", "scenario", "completed", "failed", "output tok/s", "TTFT p50 ms",
                        "TTFT p99 ms"], rows))
    summary = []
    for name in list(runs)[1:]:
        ratios = {s: median(results[(s, name)]) / median(results[(s, "base")]) for s in ("vllm", "llmsvc")}
        summary.append([name, ratios["vllm"], ratios["llmsvc"], ratios["llmsvc"] / ratios["vllm"]])
    print("\nAdapter/base output throughput (medians over rounds); goal: llmsvc's ratio ≥ 0.95 × vLLM's\n")
    print(table(["scenario", "vllm adapter/base", "llmsvc adapter/base", "llmsvc ratio / vllm ratio"], summary))
    if LORA_OFF in sides:
        on, off = median(results[("llmsvc", "base")]), median(results[(LORA_OFF, "base")])
        print(f"\nBase-model traffic: llmsvc with LoRA on {on:,.0f} tok/s, off {off:,.0f} tok/s: {on / off:.3f}x")
    print(f"\nllmsvc cold adapter (first request loads it) against warm TTFT p50 of {a.warm_samples}; goal < 2×\n")
    print(table(["adapter", "cold TTFT ms", "warm TTFT p50 ms", "cold / warm"], cold_rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--num-prompts", type=int, default=96)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--adapters", type=int, default=4, help="adapters in the rotation scenario")
    p.add_argument("--max-loras", type=int, default=2, help="adapters per batch, both sides")
    p.add_argument("--max-cpu-loras", type=int, default=4, help="adapters held in memory, both sides")
    p.add_argument("--cold", type=int, default=3, help="never-used adapters timed for llmsvc's cold load")
    p.add_argument("--warm-samples", type=int, default=5)
    p.add_argument("--lora-off-side", action="store_true",
                   help="a third side: llmsvc with LoRA off, base scenario only (what the default costs the base)")
    p.add_argument("--engine-nice", type=int, default=10, help="both engines' CPU priority (llmsvc up's default)")
    a = p.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    run(a)


if __name__ == "__main__":
    main()
