"""lm-evaluation-harness as a suite backend, against our own gateway.

The harness runs in a subprocess (``services.eval.harness_main``): it imports
a large dependency tree we keep out of this service's process, a crash in it
fails the run and not the service, and cancelling a run kills the process.
It calls the gateway's HTTP API like any client, with this service's key, so
its traffic is admitted, rate-limited and accounted like a user's.

Tasks are defined from local files: ``dataset`` (ARC-format or plain
multiple-choice JSONL from the eval data folders) becomes a generated
multiple-choice task; or ``task_dir`` (a folder of task YAMLs inside the data
folders) and ``tasks`` name your own.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from .. import stats
from .base import RunContext, Suite, SuiteError, SuiteParams, SuiteResult, file_hash, resolve_dataset

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


class HarnessParams(SuiteParams):
    dataset: str | None = "arc_sample.jsonl"
    """Multiple-choice JSONL turned into the task ``llmsvc_mc``."""
    task_dir: str | None = None
    """A folder of lm-eval task YAMLs inside the eval data folders (with ``tasks``)."""
    tasks: list[str] = []
    num_fewshot: int | None = None


class HarnessSuite(Suite):
    name = "lm_eval"
    Params = HarnessParams

    def __init__(self, params: HarnessParams, data_dirs) -> None:
        super().__init__(params, data_dirs)
        if params.task_dir:
            if not params.tasks:
                raise SuiteError("'task_dir' needs 'tasks' to name the tasks to run")
            self.task_dir = _resolve_dir(params.task_dir, data_dirs)
            self.path = None
        elif params.dataset:
            self.path = resolve_dataset(params.dataset, data_dirs)
            self.task_dir = None
        else:
            raise SuiteError("give 'dataset' or 'task_dir' and 'tasks'")

    def fingerprint(self) -> str:
        data = file_hash(self.path) if self.path else str(self.task_dir)
        return super().fingerprint()[:32] + data[:32]

    def _write_task(self, workdir: Path) -> tuple[str, list[str]]:
        if self.task_dir:
            return str(self.task_dir), list(self.params.tasks)
        from .multiple_choice import normalize_row

        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                context, choices, gold = normalize_row(json.loads(line))
                rows.append({"question": context, "choices": [" " + c for c in choices], "answer": gold})
        data = workdir / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (workdir / "tasks").mkdir()
        (workdir / "tasks" / "llmsvc_mc.yaml").write_text(_TASK_YAML.format(name="llmsvc_mc", path=data))
        return str(workdir / "tasks"), ["llmsvc_mc"]

    async def run(self, ctx: RunContext) -> SuiteResult:
        settings = ctx.settings
        await ctx.start(0)
        with tempfile.TemporaryDirectory(prefix="lm-eval-") as tmp:
            workdir = Path(tmp)
            include, tasks = self._write_task(workdir)
            spec = {"model": ctx.model, "gateway_url": settings.gateway_url, "tasks": tasks, "include_path": include,
                    "limit": self.params.limit, "num_fewshot": self.params.num_fewshot, "seed": self.params.seed,
                    "max_length": await ctx.client.max_model_len(ctx.model), "output": str(workdir / "out.json"),
                    "metrics": ["acc", "acc_norm", "exact_match"]}
            (workdir / "spec.json").write_text(json.dumps(spec))
            await _run_subprocess(workdir, settings)
            out = json.loads((workdir / "out.json").read_text())
        metrics = _metrics(out["results"])
        if not metrics:
            raise SuiteError("lm-evaluation-harness finished without any metric")
        await ctx.advance(len(out["samples"]))
        return SuiteResult(metrics, out["samples"])


def _resolve_dir(name: str, dirs: list[Path]) -> Path:
    for d in dirs:
        path = (d / name).resolve()
        if path.is_dir() and path.is_relative_to(d.resolve()):
            return path
    raise SuiteError(f"task folder '{name}' was not found in the eval data folders")


async def _run_subprocess(workdir: Path, settings) -> None:
    env = {**os.environ, "OPENAI_API_KEY": settings.api_key, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(workdir / "hf"), "TOKENIZERS_PARALLELISM": "false"}
    log_path = workdir / "harness.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.eval.harness_main", str(workdir / "spec.json"),
            stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env)
        try:
            rc = await asyncio.wait_for(proc.wait(), settings.harness_timeout_s)
        except BaseException:  # cancelled or timed out: the harness must not outlive its run
            proc.kill()
            await proc.wait()
            raise
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise SuiteError(f"lm-evaluation-harness exited with code {rc}:\n{tail}")


def _metrics(results: dict) -> dict[str, dict]:
    """``{"task": {"acc,none": v, "acc_stderr,none": se}}`` → our metric dicts, named ``task/metric``."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            name, _, filt = key.partition(",")
            if "_stderr" in name or not isinstance(value, (int, float)) or name == "alias":
                continue
            se = values.get(f"{name}_stderr,{filt}")
            se = float(se) if isinstance(se, (int, float)) and math.isfinite(se) else 0.0
            out[f"{task}/{name}"] = stats.metric(value, se, value - stats.Z95 * se, value + stats.Z95 * se, True)
    return out
