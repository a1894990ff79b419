"""Reading what a CLI process prints while it runs (``llmsvc up`` writes its banner and keeps running)."""

from __future__ import annotations

import os
import re
import subprocess
import time


def read_until(proc: subprocess.Popen, pattern: str, timeout_s: float, out: str = "") -> str:
    """``out`` plus what ``proc`` prints (stdout, non-blocking) until ``pattern`` matches the whole; an
    AssertionError with the output so far when it exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        chunk = proc.stdout.read()  # bytes, or None when nothing is ready
        if chunk:
            out += chunk.decode(errors="replace")
            if re.search(pattern, out):
                return out
        elif proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"did not see {pattern!r} (exit {proc.poll()}); output so far:\n{out[-6000:]}")
