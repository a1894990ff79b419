"""What structured outputs and tool calls cost against plain generation, on llmsvc and on ``vllm serve``.

    .venv/bin/python -m bench.structured_overhead --rounds 3 --requests 64 --concurrency 8

Both servers serve the same model with the same engine settings and CPU priority, the same tool parser (``hermes``) and
the same strictness (vLLM's ``--tool-strict-level parameter``, llmsvc's default), on the same cores.
Each mode sends the same requests (same prompts, seeds and limits) to both, through the ``openai``
client, sides alternating round by round:

- ``plain``: free text, ``max_tokens`` tokens;
- ``json_schema``: ``response_format`` with a small schema (xgrammar compiles and enforces it);
- ``tool named``: two tools offered, one forced by name (vLLM's structural tag);
- ``tool auto``: two tools offered, ``tool_choice: auto`` (the parser reads every step).

Prints one row per run (completion tokens/s, requests/s, the p50 latency) and, per mode, the ratio of
llmsvc to ``vllm serve`` and each side's ratio to its own plain generation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import openai

from bench.serve_lib import default_model, median, start_vllm_server, stop, table, wait_models
from services.cli.stack import Stack, StackConfig, free_port

MODEL_NAME = "tiny-random"
# The CPU priority ``llmsvc up`` gives its engine (StackConfig.worker_cpu_nice): vllm serve gets the same, or
# any other load on the machine would slow one side only.
WORKER_NICE = StackConfig.worker_cpu_nice
TOOLS = [
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                         "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_city", "parameters": {
        "type": "object", "properties": {"name": {"type": "string", "enum": ["ann", "bob", "cid"]}},
        "required": ["name"], "additionalProperties": False}}},
]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["paris", "rome", "oslo"]},
                                           "sum": {"type": "integer", "minimum": 0, "maximum": 198},
                                           "sure": {"type": "boolean"}},
          "required": ["city", "sum", "sure"], "additionalProperties": False}
MODES = {
    "plain": {},
    "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA,
                                                                               "strict": True}}},
    "tool named": {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}},
    "tool auto": {"tools": TOOLS, "tool_choice": "auto"},
}


async def run_mode(base_url: str, key: str, mode: str, a, rnd: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key or "none", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(a.concurrency)
    tokens, latencies, failed = [], [], 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.chat.completions.create(
                    model=MODEL_NAME, messages=[{"role": "user", "content": f"What is {i % 90} + {rnd}?"}],
                    max_tokens=a.max_tokens, temperature=1.0, seed=1000 * rnd + i, **MODES[mode])
            except openai.APIError:
                failed += 1
                return
            latencies.append(time.perf_counter() - t0)
            tokens.append(r.usage.completion_tokens)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(a.requests)))
    wall = time.perf_counter() - t0
    await client.close()
    return {"tok_s": sum(tokens) / wall, "req_s": len(tokens) / wall, "p50_s": median(latencies),
            "tokens": sum(tokens), "failed": failed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: the random tiny model)")
    p.add_argument("--modes", default=",".join(MODES))
    a = p.parse_args()
    modes = a.modes.split(",")
    model = a.model or default_model()
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-"))
    key = "sk-bench-" + secrets.token_hex(8)
    port = free_port()
    vllm_proc = start_vllm_server(model, port, MODEL_NAME, home / "vllm.log",
                                  ["--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                                   "--tool-strict-level", "parameter"], nice=WORKER_NICE)
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name=MODEL_NAME, log_level="WARNING",
                                        extra_env={"LLMSVC_WORKER_ENABLE_LORA": "false",
                                                   "LLMSVC_WORKER_TOOL_PARSER": "hermes"}))
    stack.start()
    sides = {"vllm serve": (f"http://127.0.0.1:{port}/v1", ""), "llmsvc": (stack.cfg.base_url, key)}
    try:
        wait_models(f"http://127.0.0.1:{port}", proc=vllm_proc)
        stack.wait_ready(timeout_s=300)
        print(f"model {model}; {a.requests} requests per run, concurrency {a.concurrency}, "
              f"max_tokens {a.max_tokens}, temperature 1", flush=True)
        for url, k in sides.values():  # warm-up: grammars compile, caches fill
            for mode in modes:
                asyncio.run(run_mode(url, k, mode, argparse.Namespace(**{**vars(a), "requests": 4}), 0))
        rows, results = [], {(s, m): [] for s in sides for m in modes}
        for rnd in range(1, a.rounds + 1):
            for mode in modes:
                order = list(sides) if (rnd + modes.index(mode)) % 2 else list(sides)[::-1]
                for side in order:
                    r = asyncio.run(run_mode(*sides[side], mode, a, rnd))
                    results[(side, mode)].append(r)
                    rows.append([rnd, mode, side, r["failed"], r["tokens"], r["tok_s"], r["req_s"], r["p50_s"]])
                    print(f"round {rnd} {mode:12s} {side:10s} {r['tok_s']:8.1f} tok/s", flush=True)
        print()
        print(table(["round", "mode", "side", "failed", "tokens", "completion tok/s", "req/s", "p50 latency s"],
                    rows))
        print()
        summary = []
        for mode in modes:
            ll = [x["tok_s"] for x in results[("llmsvc", mode)]]
            vv = [x["tok_s"] for x in results[("vllm serve", mode)]]
            ratios = [x / y for x, y in zip(ll, vv, strict=True)]
            own = {s: statistics.median(x["tok_s"] for x in results[(s, mode)]) /
                   statistics.median(x["tok_s"] for x in results[(s, "plain")]) if "plain" in modes else float("nan")
                   for s in sides}
            summary.append([mode, median(ll), median(vv), median(ratios), ", ".join(f"{x:.3f}" for x in ratios),
                            own["llmsvc"], own["vllm serve"]])
        print(table(["mode", "llmsvc tok/s (median)", "vllm serve tok/s (median)", "llmsvc / vllm (median)",
                     "per round", "llmsvc / its plain", "vllm / its plain"], summary))
        print()
        print(json.dumps({f"{s}|{m}": v for (s, m), v in results.items()}))
    finally:
        stack.stop()
        stop(vllm_proc)


if __name__ == "__main__":
    main()
