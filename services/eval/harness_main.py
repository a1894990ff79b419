"""Run lm-evaluation-harness once, in its own process: ``python -m services.eval.harness_main spec.json``.

The spec names the gateway, the model, the tasks and where to write results;
the API key comes from ``$OPENAI_API_KEY`` (never the command line). The
harness uses ``local-completions`` against our ``/v1/completions`` with
``tokenizer_backend=remote`` (our ``/tokenize``, ``/detokenize`` and
``/tokenizer_info``), so no tokenizer or model files are needed here, and the
datasets are local files, so it runs offline.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def run(spec: dict) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    key = os.environ.get("OPENAI_API_KEY", "")
    model_args = {
        "model": spec["model"], "base_url": spec["gateway_url"].rstrip("/") + "/v1/completions",
        "tokenizer_backend": "remote", "tokenized_requests": True, "auth_token": key,
        "num_concurrent": 1, "max_retries": 1, "timeout": 120, "max_length": spec["max_length"],
    }
    results = lm_eval.simple_evaluate(
        model="local-completions", model_args=model_args, tasks=spec["tasks"],
        task_manager=TaskManager(include_path=spec["include_path"]), limit=spec.get("limit"),
        num_fewshot=spec.get("num_fewshot"), log_samples=True, random_seed=spec["seed"],
        numpy_random_seed=spec["seed"], torch_random_seed=spec["seed"], fewshot_random_seed=spec["seed"],
    )
    samples = []
    for task, rows in (results.get("samples") or {}).items():
        for row in rows:
            samples.append({"task": task, "doc_id": row.get("doc_id"), "target": _jsonable(row.get("target")),
                            "filtered_resps": _jsonable(row.get("filtered_resps")),
                            **{m: _jsonable(row[m]) for m in spec.get("metrics", []) if m in row}})
    return {"results": results["results"], "n_samples": results.get("n-samples", {}), "samples": samples,
            "versions": _jsonable(results.get("versions", {}))}


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = run(spec)
    Path(spec["output"]).write_text(json.dumps(out, default=repr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
