"""``llmsvc up`` as a user runs it: a real process tree, a printed banner, a working API, a clean Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import psutil

from services.cli.stack import free_port
from tests.cli.procs import read_until


def test_up_serves_a_model_dir_and_stops_cleanly_on_ctrl_c(tmp_path, default_model):
    port = free_port()
    env = {**os.environ, "LLMSVC_API_KEY": "sk-up-test-key-0123456789", "COLUMNS": "200", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "up", "--home", str(tmp_path), "--port", str(port),
         "--model", str(default_model), "--served-model-name", "my-model"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        try:
            banner = read_until(proc, r"Press Ctrl-C to stop", 600)
        except AssertionError:
            logs = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                             for p in sorted((tmp_path / "logs").glob("*.log")))
            raise AssertionError(f"llmsvc up did not come up; service logs:\n{logs}") from None
        assert f"http://127.0.0.1:{port}/v1" in banner
        assert "sk-up-test-key-0123456789" in banner
        assert "curl " in banner and "my-model" in banner
        children = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in children}
        direct = [c for c in children if c.ppid() == proc.pid]
        services = {" ".join(c.cmdline()).split("services.")[-1].split(".main")[0] for c in direct}
        assert services == {"gateway", "auth", "router", "worker", "trainer", "eval"}, services
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                       headers={"Authorization": "Bearer sk-up-test-key-0123456789"},
                       json={"model": "my-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
        # The embedding worker (the same folder on vLLM's pooling runner) is up too, as <name>-embed.
        assert "(embeddings: my-model-embed)" in banner
        e = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", timeout=60, json={"model": "my-model-embed",
                                                                                 "input": ["hi", "there"]},
                       headers={"Authorization": "Bearer sk-up-test-key-0123456789"})
        assert e.status_code == 200, e.text
        assert [len(d["embedding"]) > 1 for d in e.json()["data"]] == [True, True]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.pid for p in alive]} ({names})"
        assert (tmp_path / "logs" / "gateway.log").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_rejects_a_directory_that_is_not_a_model(tmp_path):
    port = free_port()
    res = subprocess.run([sys.executable, "-m", "services.cli.main", "up", "--home", str(tmp_path), "--port",
                          str(port), "--model", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "not a Hugging Face model directory" in res.stderr


def test_up_refuses_a_busy_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "services.cli.main", "up", "--home", str(tmp_path), "--port",
                              str(port)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert f"Port {port} is already in use" in res.stderr


def test_up_rejects_a_key_auth_could_never_accept(tmp_path, default_model):
    res = subprocess.run([sys.executable, "-m", "services.cli.main", "up", "--home", str(tmp_path), "--port",
                          str(free_port()), "--model", str(default_model), "--api-key", "short"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "API key must be" in res.stderr
