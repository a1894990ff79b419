"""Bad input at the HTTP edge: schemathesis against the gateway's own OpenAPI schema.

The gateway, auth, router and eval run as real processes; the worker is the
gRPC stand-in (:mod:`services.router.standin`), because what is under test is
the edge (validation, error mapping, error shapes), and fuzzed bodies asking
for up to 16 × 1,000 tokens each would take hours on a CPU vLLM engine. The
stand-in still refuses over-long requests as a worker does, so that path is
exercised. Properties: no 5xx caused by the input (no 500 at all; 502/503
only for upstreams this stack does not run), and every error in OpenAI's shape.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from services.cli.stack import Stack, StackConfig

from .load import OPENAI_ERROR_KEYS

MAX_EXAMPLES = int(os.environ.get("LLMSVC_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def standin_stack(tmp_path_factory, default_model, api_key):
    cfg = StackConfig.ephemeral(tmp_path_factory.mktemp("edge"), default_model, api_key)
    stack = Stack(cfg)
    stack.start_worker = lambda i: stack.spawn(f"worker{i}", "services.router.standin", stack.env_for("worker", i))
    with stack.running(ready_timeout_s=120):
        yield stack


@pytest.fixture(scope="module")
def gateway_schema(standin_stack):
    root = standin_stack.cfg.base_url.removesuffix("/v1")
    return schemathesis.openapi.from_url(f"{root}/openapi.json")


def problem_with(response) -> str | None:
    """Why ``response`` breaks the edge's contract, or None."""
    if response.status_code == 500 or response.status_code >= 504:
        return f"status {response.status_code}"  # 502/503 only mean "an upstream this stack does not run"
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            return f"status {response.status_code} with a non-JSON body"
        if not isinstance(body, dict) or set(body.get("error") or {}) != OPENAI_ERROR_KEYS:
            return f"status {response.status_code} with a body not in OpenAI's error shape: {str(body)[:200]}"
    return None


def fuzz(operation, mode, api_key: str) -> list[str]:
    found: list[str] = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
        if why := problem_with(response):
            found.append(f"{operation.label} [{mode.name}]: {why}; body sent: {str(case.body)[:200]}")

    try:
        run()
    except Unsatisfiable:
        pass  # nothing to make invalid (an operation without parameters or body)
    return found


def test_gateway_answers_bad_input_in_openai_shape_and_never_500(gateway_schema, api_key):
    problems: list[str] = []
    for result in gateway_schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            problems += fuzz(operation, mode, api_key)
    assert not problems, "\n".join(sorted(set(problems))[:40])
