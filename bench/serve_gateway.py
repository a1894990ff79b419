"""Gateway overhead at high request rates, against upstreams that answer at once.

    .venv/bin/python -m bench.serve_gateway --rounds 3 --num-prompts 600 --concurrency 32 \
        [--litellm /work/litellm-venv/bin/litellm]

Sides, each measured by vLLM's benchmark client (streaming chat, --output-len tokens a reply, 8 by default):
  direct   the OpenAI HTTP stand-in itself (bench/serve_standin_http.py): the floor
  llmsvc   gateway → auth → router → gRPC stand-in worker (services/router/standin.py)
  litellm  LiteLLM proxy → the HTTP stand-in (only with --litellm, a binary in its own venv)
"requests/s per core" is completed requests per CPU-second the proxy's own processes used
(llmsvc: gateway + auth + router; LiteLLM: its process tree), so the stand-ins' cost is excluded.
"added" latency is the side's end-to-end latency percentile minus the direct side's, same round.
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from bench.serve_lib import default_model, median, stop, table, vllm_bench, wait_models
from services.cli.stack import Stack, StackConfig, free_port

MODEL_NAME = "tiny-random"


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
    return total


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def start_litellm(binary: str, upstream: str, port: int, home: Path, key: str) -> subprocess.Popen:
    """LiteLLM proxy with a master key, so it authenticates every request as llmsvc does."""
    cfg = home / "litellm.yaml"
    cfg.write_text(f"model_list:\n  - model_name: {MODEL_NAME}\n    litellm_params:\n      model: openai/{MODEL_NAME}\n"
                   f"      api_base: {upstream}/v1\n      api_key: none\ngeneral_settings:\n  master_key: {key}\n")
    return spawn([binary, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                 home / "litellm.log")


def standin_stack(home: Path, model: Path, key: str, token_delay_ms: float = 0.0) -> Stack:
    stack = Stack(StackConfig.ephemeral(home, model, key, served_model_name=MODEL_NAME, log_level="WARNING"))
    env = lambda i: {**stack.env_for("worker", i), "LLMSVC_STANDIN_TOKEN_DELAY_MS": str(token_delay_ms)}  # noqa: E731
    stack.start_worker = lambda i: stack.spawn(f"worker{i}", "services.router.standin", env(i))
    stack.start()
    stack.wait_ready(timeout_s=120)
    return stack


def measure(url: str, key: str, pids: dict[str, int], model: Path, a, seed: int) -> dict:
    args = ["--dataset-name", "random", "--random-input-len", "32", "--random-output-len", str(a.output_len),
            "--ignore-eos", "--num-prompts", str(a.num_prompts), "--max-concurrency", str(a.concurrency),
            "--seed", str(seed)]
    before = {name: cpu_seconds([pid]) for name, pid in pids.items()}
    r = vllm_bench(url, MODEL_NAME, model, args, key)
    r["cpu_by_process"] = {name: cpu_seconds([pid]) - before[name] for name, pid in pids.items()}
    r["cpu_s"] = sum(r["cpu_by_process"].values())
    return r


def run(a) -> None:
    model = default_model()
    home = Path(tempfile.mkdtemp(prefix="llmsvc-bench-"))
    key = "sk-bench-" + secrets.token_hex(8)
    http_port = free_port()
    upstream = spawn([sys.executable, "-m", "bench.serve_standin_http", "--port", str(http_port),
                      "--model", MODEL_NAME], home / "standin_http.log")
    procs = [upstream]
    stack = standin_stack(home, model, key, a.token_delay_ms)
    sides = {"direct": (f"http://127.0.0.1:{http_port}", "", {}),
             "llmsvc": (stack.cfg.base_url.removesuffix("/v1"), key,
                        {n: stack.procs[n].popen.pid for n in ("gateway", "auth", "router")})}
    try:
        wait_models(sides["direct"][0], proc=upstream)
        if a.litellm:
            port = free_port()
            procs.append(start_litellm(a.litellm, sides["direct"][0], port, home, key))
            wait_models(f"http://127.0.0.1:{port}", key, timeout_s=180, proc=procs[-1])
            sides["litellm"] = (f"http://127.0.0.1:{port}", key, {"litellm": procs[-1].pid})
        for url, k, pids in sides.values():
            measure(url, k, pids, model, argparse.Namespace(num_prompts=a.concurrency * 2, concurrency=a.concurrency,
                                                            output_len=a.output_len), 0)
        report(rounds(sides, model, a), a)
    finally:
        stack.stop()
        for p in procs:
            stop(p)


def rounds(sides: dict, model: Path, a) -> list[tuple[int, str, dict]]:
    out = []
    names = list(sides)
    for rnd in range(1, a.rounds + 1):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            url, k, pids = sides[name]
            out.append((rnd, name, measure(url, k, pids, model, a, rnd)))
    return out


def report(results: list[tuple[int, str, dict]], a) -> None:
    direct = {rnd: r for rnd, name, r in results if name == "direct"}
    rows, agg = [], {}
    for rnd, name, r in results:
        per_core = r["completed"] / r["cpu_s"] if r["cpu_s"] else float("nan")
        add50 = r["p50_e2el_ms"] - direct[rnd]["p50_e2el_ms"]
        add99 = r["p99_e2el_ms"] - direct[rnd]["p99_e2el_ms"]
        rows.append([rnd, name, r["completed"], r["failed"], r["request_throughput"], per_core,
                     r["p50_e2el_ms"], r["p99_e2el_ms"], add50, add99])
        agg.setdefault(name, []).append((r["request_throughput"], per_core, add50, add99))
    head = ["round", "side", "ok", "failed", "req/s", "req/s per core", "E2E p50 ms", "E2E p99 ms",
            "added p50 ms", "added p99 ms"]
    print(table(head, rows))
    print()
    print(table(["side (median of rounds)", "req/s", "req/s per core", "added p50 ms", "added p99 ms"],
                [[n, *(median([v[i] for v in vals]) for i in range(4))] for n, vals in agg.items()]))
    print()
    cpu: dict[str, list[float]] = {}
    for _, _, r in results:
        for proc, secs in r["cpu_by_process"].items():
            cpu.setdefault(proc, []).append(1000 * secs / max(1, r["completed"]))
    print(table(["process", "CPU ms per request (median of rounds)", "CPU µs per token"],
                [[p, median(v), 1000 * median(v) / a.output_len] for p, v in cpu.items()]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--num-prompts", type=int, default=600)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--output-len", type=int, default=8, help="tokens per streamed reply")
    p.add_argument("--token-delay-ms", type=float, default=0.0,
                   help="the llmsvc stand-in worker pauses this long before each token, like an engine step "
                        "(the HTTP stand-in of the direct side answers at once)")
    p.add_argument("--litellm", help="path of the litellm executable (in its own venv)")
    run(p.parse_args())


if __name__ == "__main__":
    main()
