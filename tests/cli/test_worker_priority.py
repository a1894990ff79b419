"""The engine's CPU priority under ``llmsvc up`` (``services.worker.priority``), in real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli.stack import Stack, StackConfig

_PROBE = """
import json, os, subprocess, sys
from services.worker.priority import lower_cpu_priority
done = lower_cpu_priority(int(sys.argv[1]))
child = subprocess.run([sys.executable, "-c", "import os; print(os.getpriority(os.PRIO_PROCESS, 0))"],
                       capture_output=True, text=True).stdout.strip()
group = open("/proc/self/autogroup").read().strip() if os.path.exists("/proc/self/autogroup") else ""
print(json.dumps({"done": done, "nice": os.getpriority(os.PRIO_PROCESS, 0), "child": int(child), "group": group}))
"""

ROOT = Path(__file__).resolve().parents[2]


def _probe(nice: int, new_session: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(nice)], capture_output=True, text=True, cwd=ROOT,
                         start_new_session=new_session, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_session_leader_lowers_its_session_and_its_children():
    got = _probe(10, new_session=True)
    assert got["nice"] == 10 and got["child"] == 10  # the engine processes it starts inherit it
    if os.path.exists("/proc/self/autogroup"):
        assert got["done"] == ["process", "autogroup"]
        assert got["group"].endswith("nice 10")


def test_a_worker_inside_someone_elses_session_leaves_the_session_alone():
    before = Path("/proc/self/autogroup").read_text() if os.path.exists("/proc/self/autogroup") else ""
    got = _probe(7, new_session=False)
    assert got["done"] == ["process"] and got["nice"] == 7 and got["child"] == 7
    if before:
        assert Path("/proc/self/autogroup").read_text() == before  # our session (pytest's) is unchanged


def test_zero_changes_nothing():
    got = _probe(0, new_session=True)
    assert got["done"] == [] and got["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


def test_stack_sets_it_for_workers_and_the_workers_the_router_starts(tmp_path, monkeypatch):
    import json

    monkeypatch.delenv("LLMSVC_WORKER_CPU_NICE", raising=False)
    cfg = StackConfig.ephemeral(tmp_path, tmp_path / "model", "sk-" + "x" * 64, spare_worker_ports=[1])
    stack = Stack(cfg)
    assert stack.env_for("worker", 0)["LLMSVC_WORKER_CPU_NICE"] == "10"
    assert json.loads(stack.env_for("router")["LLMSVC_ROUTER_WORKER_ENV"])["LLMSVC_WORKER_CPU_NICE"] == "10"
    monkeypatch.setenv("LLMSVC_WORKER_CPU_NICE", "0")  # the user's setting wins
    assert Stack(cfg).env_for("worker", 0)["LLMSVC_WORKER_CPU_NICE"] == "0"
    assert json.loads(Stack(cfg).env_for("router")["LLMSVC_ROUTER_WORKER_ENV"])["LLMSVC_WORKER_CPU_NICE"] == "0"


def test_out_of_range_is_refused_at_start_up(monkeypatch):
    from pydantic import ValidationError

    from services.worker.config import WorkerSettings

    monkeypatch.setenv("LLMSVC_WORKER_MODEL", "/m")
    for bad in ("-5", "20", "high"):
        monkeypatch.setenv("LLMSVC_WORKER_CPU_NICE", bad)
        with pytest.raises(ValidationError, match="cpu_nice"):
            WorkerSettings()
