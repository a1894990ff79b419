"""Added latency of the auth path in front of a model, llmsvc vs LiteLLM proxy, same load, same machine.

Four sides, each measured by the same client (non-streamed chat, 8 tokens, fixed concurrency), rounds
rotating the order so drift on a shared machine hits every side:

  llmsvc-noauth   gateway → no-op auth (bench/auth_noop.py) → router → stand-in worker
  llmsvc-auth     gateway → real auth (keys in PostgreSQL, limits in Redis, ledger) → router → stand-in
  litellm-noauth  LiteLLM proxy, no master key, model answered by LiteLLM's ``mock_response``
  litellm-auth    the same with ``master_key`` (LiteLLM's cheapest auth: no database, no limits)

"added by auth" is (auth side − noauth side) of the same proxy in the same round; the upstreams cancel
out. LiteLLM's virtual keys (per-key limits, spend logs) need Prisma, whose engine download host does
not resolve here; see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.auth_latency import REDIS_URL, drop_database, pct, purge_redis, temp_database
from services.cli.stack import Stack, StackConfig, free_port

MODEL = "tiny-random"


def add_args(p) -> None:
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--litellm", help="the litellm executable, in its own venv (never the project's)")


class BenchStack(Stack):
    """The real stack with the stand-in worker, optionally the no-op auth, and no trainer/eval."""

    def __init__(self, cfg: StackConfig, auth_module: str) -> None:
        super().__init__(cfg)
        self.auth_module = auth_module

    def spawn(self, name: str, module: str, env: dict[str, str]):
        if name in ("eval", "trainer"):
            return None
        if name == "auth":
            module = self.auth_module
        elif name.startswith("worker"):
            module = "services.router.standin"
        return super().spawn(name, module, env)


def start_stack(home: Path, model: Path, key: str, auth_module: str, db_url: str, prefix: str) -> BenchStack:
    cfg = StackConfig.ephemeral(home, model, key, served_model_name=MODEL, log_level="WARNING", database_url=db_url,
                                redis_url=REDIS_URL, extra_env={"LLMSVC_AUTH_REDIS_PREFIX": prefix})
    stack = BenchStack(cfg, auth_module)
    stack.start()
    stack.wait_ready(timeout_s=120)
    return stack


def start_litellm(binary: str, home: Path, master_key: str | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = home / f"litellm-{'auth' if master_key else 'noauth'}.yaml"
    text = (f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
            f"      mock_response: \"tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7\"\n      api_key: none\n")
    if master_key:
        text += f"general_settings:\n  master_key: {master_key}\n"
    cfg.write_text(text)
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           # Recent LiteLLM refuses to start without a master key unless told this is a local test.
           "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
    proc = subprocess.Popen([binary, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                             "--num_workers", "1"], env=env, stdout=open(home / f"{cfg.stem}.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True, cwd=home)
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_http(base: str, key: str, proc: subprocess.Popen | None = None, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{base} exited")
        try:
            if httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(base)


async def http_load(base: str, key: str, n: int, concurrency: int) -> list[float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to eight."}], "max_tokens": 8}
    latencies: list[float] = []
    left = iter(range(n))
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            for _ in left:
                start = time.perf_counter()
                r = await client.post("/chat/completions", json=body)
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    raise RuntimeError(f"{base}: {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def default_model() -> Path:
    """The built-in tiny model's tokenizer and config (the stand-in worker needs only the name)."""
    from services.cli.default_model import build_default_model

    path = Path(os.environ.get("LLMSVC_TEST_CACHE", Path.home() / ".cache" / "llmsvc-test")) / "tiny-random"
    if not (path / "config.json").exists():
        build_default_model(path)
    return path


def run(a) -> None:
    home = Path(tempfile.mkdtemp(prefix="llmsvc-authgw-"))
    key = "sk-bench-" + secrets.token_hex(16)
    db_name, db_url = asyncio.run(temp_database())
    prefix = f"llmsvc-bench:{home.name}:"
    model = default_model()
    stacks, procs, sides = [], [], {}
    try:
        for side, module in (("llmsvc-noauth", "bench.auth_noop"), ("llmsvc-auth", "services.auth.main")):
            sub = home / side
            stacks.append(start_stack(sub, model, key, module, db_url, prefix))
            pids = [stacks[-1].procs[n].popen.pid for n in ("gateway", "auth", "router")]
            sides[side] = (stacks[-1].cfg.base_url, key, pids)
        if a.litellm:
            for side, master in (("litellm-noauth", None), ("litellm-auth", "sk-litellm-" + secrets.token_hex(16))):
                proc, base = start_litellm(a.litellm, home, master)
                procs.append(proc)
                wait_http(base, master or "none", proc)
                sides[side] = (base, master or "none", [proc.pid])
        report(measure(sides, a))
    finally:
        for s in stacks:
            s.stop()
        for p in procs:
            p.terminate()
            p.wait(30)
        asyncio.run(drop_database(db_name))
        purge_redis(prefix)


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes and their children (LiteLLM's worker, vLLM-free stand-ins excluded)."""
    total = 0.0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
    return total


def measure(sides: dict, a) -> dict[str, list[tuple[float, float, float, float]]]:
    """side → per round (p50 s, p99 s, req/s, proxy CPU-seconds per request)."""
    names = list(sides)
    for name in names:  # warm-up
        base, key, _ = sides[name]
        asyncio.run(http_load(base, key, 2 * a.concurrency, a.concurrency))
    out: dict[str, list] = {n: [] for n in names}
    for rnd in range(a.rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            base, key, pids = sides[name]
            start, cpu = time.perf_counter(), cpu_seconds(pids)
            lat = asyncio.run(http_load(base, key, a.requests, a.concurrency))
            wall, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu
            out[name].append((pct(lat, 50), pct(lat, 99), len(lat) / wall, cpu / len(lat)))
    return out


def report(out: dict) -> None:
    med = {n: [statistics.median(r[i] for r in rounds) for i in range(4)] for n, rounds in out.items()}
    print("| side | E2E p50 ms | E2E p99 ms | req/s | proxy CPU ms/request |\n|---|---|---|---|---|")
    for n, (p50, p99, rps, cpu) in med.items():
        print(f"| {n} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | {rps:,.0f} | {cpu * 1e3:.2f} |")
    print("\n| proxy | added by auth, p50 ms | added by auth, p99 ms | added CPU ms/request |\n|---|---|---|---|")
    added = {}
    for proxy in ("llmsvc", "litellm"):
        if f"{proxy}-auth" in med:
            rounds = list(zip(out[f"{proxy}-auth"], out[f"{proxy}-noauth"], strict=True))
            added[proxy] = [statistics.median(x[i] - y[i] for x, y in rounds) for i in (0, 1, 3)]
            print(f"| {proxy} | {added[proxy][0] * 1e3:.2f} | {added[proxy][1] * 1e3:.2f} | "
                  f"{added[proxy][2] * 1e3:.2f} |")
    if len(added) == 2 and added["llmsvc"][0] > 0:
        print(f"\nLiteLLM/llmsvc ratio of added p50: {added['litellm'][0] / added['llmsvc'][0]:.2f}")
