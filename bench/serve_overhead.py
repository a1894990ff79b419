"""Overhead of the full llmsvc path (gateway → auth → router → worker) against ``vllm serve`` of the
same model, measured in one run by vLLM's own benchmark client, sides alternating round by round.

    .venv/bin/python -m bench.serve_overhead --rounds 3 --num-prompts 200 --concurrency 16

Both servers run the same engine settings (enforce-eager, prefix caching, 64 sequences, 1 GiB KV
cache, the same ``--stream-interval``, the same CPU priority ``--engine-nice``) on the same cores;
each round runs one side then the other (the order flips every round) so drift in a noisy machine
hits both. Prints one row per run and the median ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
from pathlib import Path

import psutil

from bench.serve_gateway import cpu_seconds
from bench.serve_lib import default_model, median, start_vllm_server, stop, table, vllm_bench, wait_models
from services.cli.stack import Stack, StackConfig, free_port, model_runner_cpus

MODEL_NAME = "tiny-random"
PROXIES = ("gateway", "auth", "router")
PER_REQUEST = "llmsvc per-request streams"


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
    interval = ["--stream-interval", str(a.stream_interval)]
    vllm_proc = start_vllm_server(model, vllm_port, MODEL_NAME, home / "vllm.log", interval, nice=a.engine_nice)
    # LoRA off: `vllm serve` here runs without it, and this measures the hops, not LoRA's per-step cost.
    engine_args = {"LLMSVC_WORKER_ENGINE_ARGS": json.dumps({"stream_interval": a.stream_interval}),
                   "LLMSVC_WORKER_ENABLE_LORA": "false",
                   "LLMSVC_WORKER_CPU_NICE": str(a.engine_nice)}
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name=MODEL_NAME, log_level="WARNING",
                                        extra_env=engine_args))
    stack.start()
    sides = {"vllm": (f"http://127.0.0.1:{vllm_port}", ""),
             "llmsvc": (stack.cfg.base_url.removesuffix("/v1"), key)}
    # The same stack again with the proxies (gateway, auth, router) at a lower CPU priority than the engine,
    # and kept off the cores vLLM bound its model-runner process to.
    nice_side = f"llmsvc nice {a.proxy_nice} + off engine cores"
    if a.proxy_nice:
        sides[nice_side] = sides["llmsvc"]
    # The same stack with gateway and router restarted on one Generate call per request on each hop
    # (LLMSVC_GATEWAY_MULTIPLEX=false, LLMSVC_ROUTER_MULTIPLEX=false): the transport before GenerateMany.
    if a.per_request_side:
        sides[PER_REQUEST] = sides["llmsvc"]
    multiplexing = [True]

    def multiplex_hops(on: bool) -> None:
        if multiplexing[0] != on:
            for name in ("gateway", "router"):
                stack.stop_proc(name)
                stack.cfg.extra_env[f"LLMSVC_{name.upper()}_MULTIPLEX"] = str(on).lower()
                stack.spawn(name, f"services.{name}.main", stack.env_for(name))
            stack.wait_ready(timeout_s=120)
            multiplexing[0] = on

    def pids(side: str) -> dict[str, int]:
        """Processes whose CPU time is counted for ``side`` (with children: the vLLM engine core)."""
        if side == "vllm":
            return {"vllm serve": vllm_proc.pid}
        return {n: stack.procs[n].popen.pid for n in ("gateway", "auth", "router", "worker0")}
    try:
        wait_models(sides["vllm"][0], proc=vllm_proc)
        stack.wait_ready(timeout_s=300)
        for side, (url, k) in sides.items():  # warm-up: first requests compile and allocate
            multiplex_hops(side != PER_REQUEST)
            vllm_bench(url, MODEL_NAME, model, bench_args(a, 0, 2 * a.concurrency), k)
        rows, results = [], {s: [] for s in sides}
        for rnd in range(1, a.rounds + 1):
            order = list(sides) if rnd % 2 else list(sides)[::-1]
            for side in order:
                url, k = sides[side]
                if side.startswith("llmsvc"):
                    multiplex_hops(side != PER_REQUEST)
                    tuned = side == nice_side
                    engine_cpus = model_runner_cpus(stack.procs["worker0"].popen.pid)
                    spare = set(range(os.cpu_count() or 1)) - engine_cpus
                    for n in PROXIES:
                        pid = stack.procs[n].popen.pid
                        os.setpriority(os.PRIO_PROCESS, pid, a.proxy_nice if tuned else 0)
                        os.sched_setaffinity(pid, spare if tuned and spare else range(os.cpu_count() or 1))
                counted = pids(side)
                before = {n: cpu_seconds([pid]) for n, pid in counted.items()}
                tree_before = cpu_by_process(counted) if a.tree else {}
                r = vllm_bench(url, MODEL_NAME, model, bench_args(a, rnd, a.num_prompts), k)
                r["cpu"] = {n: cpu_seconds([pid]) - before[n] for n, pid in counted.items()}
                if a.tree:
                    r["cpu"] |= {n: t - tree_before.get(n, 0.0) for n, t in cpu_by_process(counted).items()}
                results[side].append(r)
                rows.append(row(side, rnd, r))
        print(table(["round", "side", "ok", "failed", "output tok/s", "TTFT p50 ms", "TTFT p99 ms",
                     "ITL p50 ms", "ITL p99 ms"], rows))
        print()
        print(summary(results))
        print()
        print(cpu_table(results))
    finally:
        stack.stop()
        stop(vllm_proc)


def cpu_by_process(counted: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each process of each counted tree, as ``name / process title`` (``--tree``)."""
    out: dict[str, float] = {}
    for n, pid in counted.items():
        root = psutil.Process(pid)
        for p in root.children(recursive=True):
            try:
                t = p.cpu_times()
                title = p.name()
            except psutil.Error:
                continue
            key = f"{n} / {title}"
            out[key] = out.get(key, 0.0) + t.user + t.system
        t = root.cpu_times()
        out[f"{n} / (itself)"] = t.user + t.system
    return out


def summary(results: dict[str, list[dict]]) -> str:
    return "\n\n".join(summary_of(results, side) for side in results if side != "vllm")


def summary_of(results: dict[str, list[dict]], side: str) -> str:
    pairs = list(zip(results["vllm"], results[side], strict=True))
    ratio = [b["output_throughput"] / v["output_throughput"] for v, b in pairs]
    d_ttft50 = [b["p50_ttft_ms"] - v["p50_ttft_ms"] for v, b in pairs]
    d_ttft99 = [b["p99_ttft_ms"] - v["p99_ttft_ms"] for v, b in pairs]
    d_itl50 = [b["p50_itl_ms"] - v["p50_itl_ms"] for v, b in pairs]
    return table([f"{side} vs vllm (per round, then median)", "throughput ×", "Δ TTFT p50 ms", "Δ TTFT p99 ms",
                  "Δ ITL p50 ms"],
                 [[f"round {i + 1}", ratio[i], d_ttft50[i], d_ttft99[i], d_itl50[i]] for i in range(len(pairs))]
                 + [["median", median(ratio), median(d_ttft50), median(d_ttft99), median(d_itl50)]])


def cpu_table(results: dict[str, list[dict]]) -> str:
    """CPU milliseconds per output token, by process, median over rounds."""
    rows = []
    for side, runs in results.items():
        for proc in runs[0]["cpu"]:
            per_tok = [1000 * r["cpu"].get(proc, 0.0) / max(1, r["total_output_tokens"]) for r in runs]
            rows.append([side, proc, median(per_tok)])
    return table(["side", "process (with children)", "CPU ms per output token"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--stream-interval", type=int, default=1,
                   help="vLLM's stream_interval on both sides: tokens per streamed message after the first")
    p.add_argument("--per-request-side", action="store_true",
                   help="also run the stack with one Generate call per request on every hop (no GenerateMany)")
    p.add_argument("--engine-nice", type=int, default=10,
                   help="CPU priority of both sides' engines (the worker's LLMSVC_WORKER_CPU_NICE, which llmsvc up "
                        "sets to 10; 0: as before)")
    p.add_argument("--tree", action="store_true",
                   help="also break each side's CPU down by process (front end, engine core, model runner …)")
    p.add_argument("--proxy-nice", type=int, default=0,
                   help="also run the stack with gateway, auth and router at this nice value (a third side)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
