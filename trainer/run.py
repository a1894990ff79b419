"""Entry point of a training job: ``python -m trainer.run --spec SPEC.json [--events EVENTS.jsonl]``.

Also runs under ``torchrun --nproc_per_node N -m trainer.run ...`` (rank 0 reports
and writes). Exit codes: 0 succeeded, 1 failed (the reason on stderr and in the
final ``status`` event), 143 cancelled by SIGTERM (after a checkpoint when a
checkpoint folder is set). The contract is written down in ``trainer/README.md``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import traceback

from .data.sources import DataError
from .events import EventSink, job_label, metrics_port_from_env
from .export import tmp_path
from .loop import Cancelled
from .model import ModelTooLarge
from .spec import SpecError, load_spec

EXPECTED = (SpecError, DataError, ModelTooLarge, ValueError, FileNotFoundError)
"""Failures with a message meant for the user: no traceback needed."""


class StopSignal:
    """SIGTERM while training asks the loop to stop at the next step boundary (and checkpoint);
    SIGTERM before training starts (data preparation, model loading) cancels at once."""

    def __init__(self) -> None:
        self.requested = False
        self.in_loop = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self.in_loop:
            raise Cancelled(0, None)

    def __call__(self) -> bool:
        self.in_loop = True  # the loop polls from its first step on
        return self.requested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.run", description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True, help="path of SPEC.json")
    parser.add_argument("--events", help="JSON-lines event file (default: stdout)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    args = parser.parse_args(argv)

    from .job import run_job
    from .parallelize import close_distributed, init_distributed

    stop = StopSignal()
    d = init_distributed()
    sink = EventSink(args.events, enabled=d.is_main)
    spec = None
    code = 1
    try:
        spec = load_spec(args.spec)
        sink.job = job_label(spec.output_dir)
        sink.serve_metrics(metrics_port_from_env())
        sink.status("running", f"{spec.recipe} job started")
        out = run_job(spec, d=d, sink=sink, stop_requested=stop, show_progress=not args.quiet)
        sink.status("succeeded", f"model written to {out}")
        code = 0
    except Cancelled as exc:
        sink.status("cancelled", str(exc))
        print(f"trainer: {exc}", file=sys.stderr)
        code = 143
    except EXPECTED as exc:
        print(f"trainer: error: {exc}", file=sys.stderr)
        sink.status("failed", str(exc))
    except Exception as exc:  # a bug or an environment problem: keep the traceback for whoever debugs it
        traceback.print_exc()
        sink.status("failed", f"{type(exc).__name__}: {exc}")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if spec is not None and code != 0 and d.is_main:
            shutil.rmtree(tmp_path(spec.output_dir), ignore_errors=True)  # never leave a partial model behind
        sink.close()
        close_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
