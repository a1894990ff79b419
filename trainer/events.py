"""Job events (JSON lines) and Prometheus gauges: how a job reports to the control plane.

Only rank 0 reports; other ranks get a sink whose methods do nothing, so call
sites never branch on the rank.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

STATUSES = ("running", "succeeded", "failed", "cancelled")


class EventSink:
    """Writes one JSON object per line and flushes it, so a reader tailing the file sees each event at once."""

    def __init__(self, path: str | Path | None = None, enabled: bool = True, job: str = "") -> None:
        self.enabled = enabled
        self._own = False
        self._out: IO[str] | None = None
        self._gauges: dict[str, Any] = {}
        self.job = job
        if not enabled:
            return
        if path is None:
            self._out = sys.stdout
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._out = open(path, "a", buffering=1)
            self._own = True

    # -- the four event types of the contract -----------------------------------------
    def emit(self, type_: str, **fields: Any) -> None:
        if not self.enabled or self._out is None:
            return
        self._out.write(json.dumps({"ts": time.time(), "type": type_, **fields}) + "\n")
        self._out.flush()

    def metrics(self, step: int, **values: float | int | None) -> None:
        clean = {k: v for k, v in values.items() if v is not None}
        self.emit("metrics", step=step, **clean)
        self._set_gauges(step, clean)

    def message(self, message: str, level: str = "info") -> None:
        self.emit("message", level=level, message=message)

    def checkpoint(self, step: int, path: str | Path) -> None:
        self.emit("checkpoint", step=step, path=str(path))

    def status(self, status: str, message: str = "") -> None:
        assert status in STATUSES, status
        self.emit("status", status=status, message=message)

    # -- Prometheus --------------------------------------------------------------------
    def serve_metrics(self, port: int) -> None:
        """Expose ``llmsvc_train_*`` gauges on ``port`` (label ``job_id``)."""
        if not self.enabled or not port:
            return
        from prometheus_client import Gauge, start_http_server

        names = {
            "loss": ("llmsvc_train_loss", "Training loss of the last optimizer step"),
            "step": ("llmsvc_train_step", "Last completed optimizer step"),
            "tokens_per_s": ("llmsvc_train_tokens_per_second", "Training throughput in tokens per second"),
            "grad_norm": ("llmsvc_train_grad_norm", "Global gradient norm before clipping"),
            "lr": ("llmsvc_train_learning_rate", "Learning rate of the last optimizer step"),
        }
        self._gauges = {key: Gauge(name, doc, ["job_id"]).labels(job_id=self.job) for key, (name, doc) in names.items()}
        start_http_server(port)

    def _set_gauges(self, step: int, values: dict[str, Any]) -> None:
        if not self._gauges:
            return
        self._gauges["step"].set(step)
        for key in ("loss", "tokens_per_s", "grad_norm", "lr"):
            if key in values:
                self._gauges[key].set(values[key])

    def close(self) -> None:
        if self._own and self._out is not None:
            self._out.close()
        self._out = None


def metrics_port_from_env() -> int:
    return int(os.environ.get("LLMSVC_TRAINER_METRICS_PORT", "0") or 0)


def job_label(output_dir: str) -> str:
    return os.environ.get("LLMSVC_JOB_ID") or Path(output_dir).name
