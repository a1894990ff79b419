"""The README's quick-start line, as written, on a fresh home, the way a new user runs it.

``bash scripts/install.sh && .venv/bin/llmsvc up`` runs through bash in the repository: the install is a no-op
on the installed tree (it says so), and ``llmsvc up`` with no options builds tiny-chat on first run, registers
it as ``tiny-chat-v1`` with the alias ``tiny-chat``, serves it on 127.0.0.1:8000 and stops everything on
Ctrl-C (SIGINT to the foreground process group, as a terminal sends it).

One thing differs from a user's first run: ``LLMSVC_TINY_CHAT_STEPS=60`` shortens the build (the same
``trainer.tiny_chat.build``, 60 steps instead of the recipe's 1,400, which take 6 to 10 minutes on two cores
and are measured by ``bench.train_tiny_chat``). The home is fresh through ``LLMSVC_HOME``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from services.cli.stack import free_port, port_in_use
from services.cli.up import STEPS_ENV, build_overrides
from tests.cli.procs import read_until
from tests.readme import ROOT, block

PORT = 8000


def _line() -> str:
    """The quick start's first line as written (its trailing comment is bash's to ignore)."""
    line = block("# llmsvc", "bash").text.splitlines()[0]
    assert line.startswith("bash scripts/install.sh && .venv/bin/llmsvc up"), line
    return line


def _sse(stdout: str) -> list[dict]:
    events = [line.removeprefix("data: ") for line in stdout.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", stdout[-2000:]
    return [json.loads(e) for e in events[:-1]]


def test_the_quick_start_line_builds_tiny_chat_on_a_fresh_home_serves_it_on_8000_and_stops_on_ctrl_c(tmp_path):
    assert not port_in_use(PORT), (f"port {PORT} is in use: the quick start serves there. Stop what runs on it "
                              f"(an `llmsvc up` of your own?) and run this test again.")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("LLMSVC_API_KEY", "LLMSVC_HOME")}
    env.update(LLMSVC_HOME=str(home), COLUMNS="200", VLLM_CPU_KVCACHE_SPACE="1", **{STEPS_ENV: "60"})
    proc = subprocess.Popen(["bash", "-c", _line()], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            out = read_until(proc, r"Press Ctrl-C to stop", 900)
        except AssertionError as exc:
            logs = "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                             for p in sorted((home / "logs").glob("*.log")))
            raise AssertionError(f"{exc}\nservice logs:\n{logs}") from None
        assert "install: .venv is up to date" in out
        assert "Training the default model tiny-chat for 60 steps" in out
        # Piped, as here, the build prints its progress as lines: from data preparation to the last step.
        assert re.search(r"tiny-chat 0/62 \(\d+ s\): preparing synthetic data", out), out[-3000:]
        assert re.search(r"tiny-chat \d+/62 \(\d+ s\): training step", out) and "tiny-chat 62/62" in out
        # The build ran on this home and published a model with its held-out scores.
        meta = json.loads((home / "models" / "tiny-chat" / "llmsvc.json").read_text())
        assert meta["tool_parser"] == "hermes" and 0 <= meta["metrics"]["accuracy"] <= 1
        # The key was generated and kept in the home; the banner names it, the address and the alias.
        key = (home / "api_key").read_text().strip()
        assert re.search(rf"API\s+http://127\.0\.0\.1:{PORT}/v1\b", out), out[-2000:]
        assert re.search(rf"API key\s+{re.escape(key)}\b", out) and re.search(r"model\s+tiny-chat\b", out)

        # The curl line the banner prints, pasted as it is.
        printed = out[out.index("  curl "):out.index("Press Ctrl-C")].strip()
        r = subprocess.run(["bash", "-c", printed], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        chunks = _sse(r.stdout)
        # Asked for the alias, the answer names the version it resolved to (as OpenAI's gpt-4o answers as a
        # dated snapshot).
        assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
        assert {c["model"] for c in chunks} == {"tiny-chat-v1"}

        # The README's "Talk to it" curl block, as written (no address replaced: this is port 8000).
        r = subprocess.run(["bash", "-c", block("## Talk to it", "bash").text], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "KEY": key})
        assert r.returncode == 0, r.stderr
        assert {c["model"] for c in _sse(r.stdout)} == {"tiny-chat-v1"}

        # The built model is a registry version with the alias, from the first run.
        models = httpx.get(f"http://127.0.0.1:{PORT}/v1/models", headers={"Authorization": f"Bearer {key}"},
                           timeout=30).json()
        ids = {m["id"] for m in models["data"]}
        assert {"tiny-chat", "tiny-chat-v1"} <= ids, ids

        children = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground process group
        assert proc.wait(120) == 0
        out = read_until(proc, r"stopped\.", 5, out) if "stopped." not in out else out
        gone, alive = psutil.wait_procs(children, timeout=60)
        assert not alive, f"left running after Ctrl-C: {[(p.pid, p.name()) for p in alive]}"
        assert not port_in_use(PORT)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """After a failure: Ctrl-C first (the services run in sessions of their own, so only ``llmsvc up`` can stop
    them cleanly), then kill whatever is left of the tree."""
    if proc.poll() is not None:
        return
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_a_bad_build_size_is_refused_before_anything_starts(tmp_path):
    """``LLMSVC_TINY_CHAT_STEPS`` that is not a whole number of steps: exit 2 with what to do, nothing built."""
    env = {**os.environ, "LLMSVC_HOME": str(tmp_path), STEPS_ENV: "lots"}
    llmsvc = Path(sys.executable).parent / "llmsvc"  # the console script of the environment running the tests
    r = subprocess.run([str(llmsvc), "up", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{STEPS_ENV}='lots'" in r.stderr and "whole number" in r.stderr
    assert not (tmp_path / "models").exists()
    assert build_overrides({}) == {}
    assert build_overrides({STEPS_ENV: "60"})["hyperparameters"]["steps"] == 60

