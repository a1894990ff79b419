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
from hypothesis import HealthCheck, settings

from services.cli.stack import Stack, StackConfig

from .load import OPENAI_ERROR_KEYS

MAX_EXAMPLES = int(os.environ.get("LLMSVC_FUZZ_EXAMPLES", "30"))


@pytest.fixture(scope="module")
def standin_stack(tmp_path_factory, default_model, api_key):
    cfg = StackConfig.ephemeral(tmp_path_factory.mktemp("edge"), default_model, api_key)
    stack = Stack(cfg)
    stack.start_worker = lambda i: stack.spawn(f"worker{i}", "services.router.standin", stack.env_for("worker", i))
    stack.start()
    try:
        stack.wait_ready(timeout_s=120)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def gateway_schema(standin_stack):
    root = standin_stack.cfg.base_url.removesuffix("/v1")
    return schemathesis.openapi.from_url(f"{root}/openapi.json")


schema = schemathesis.pytest.from_fixture("gateway_schema")


@schemathesis.check
def openai_error_shape(ctx, response, case) -> None:
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body.get("error", {})) == OPENAI_ERROR_KEYS, body


@schemathesis.check
def no_server_error(ctx, response, case) -> None:
    # 502/503 mean "an upstream this stack does not run" (e.g. the trainer), never a crash.
    assert response.status_code != 500 and response.status_code < 504, response.text[:500]


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_gateway_rejects_bad_input_in_openai_shape(case, api_key):
    response = case.call(headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    case.validate_response(response, checks=[no_server_error, openai_error_shape])
