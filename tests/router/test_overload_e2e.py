"""Overload on a real two-worker stack: offered load above the router's bounds gets fast 503s with
``retry-after`` (not timeouts), and the service recovers when the load stops.

The stack's router admits 6 requests per worker plus 6 queued (``E2E_ROUTER_ENV``); 48 concurrent
requests of 150 tokens are far above that.
"""

from __future__ import annotations

import asyncio

from .conftest import wait_healthy
from .load import OPENAI_ERROR_KEYS, client_for

OFFERED = 48


async def _post(client, model: str, i: int, order: list) -> tuple[int, dict, dict]:
    body = {"model": model, "messages": [{"role": "user", "content": f"overload {i}"}], "max_tokens": 150,
            "ignore_eos": True}
    resp = await client.post("/chat/completions", json=body)
    order.append(resp.status_code)
    return resp.status_code, dict(resp.headers), resp.json()


async def test_overload_gets_fast_503_with_retry_after_then_recovers(stack2, api_key):
    await wait_healthy(stack2, 2)
    model = stack2.cfg.served_model_name or stack2.cfg.model.name
    async with client_for(stack2.cfg.base_url, api_key) as client:
        order: list[int] = []
        results = await asyncio.wait_for(asyncio.gather(*(_post(client, model, i, order) for i in range(OFFERED))), 240)
        statuses = [s for s, _, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        refused = [(h, b) for s, h, b in results if s == 503]
        assert len(refused) >= OFFERED - 2 * 6 - 6 - 6, statuses  # the bounds, less some that freed up
        for headers, body in refused:
            assert int(headers["retry-after"]) >= 1
            assert set(body["error"]) == OPENAI_ERROR_KEYS and body["error"]["code"] == "overloaded"
        # Refusals are immediate: every 503 arrived before the first admitted request finished.
        assert order.index(200) >= len(refused), order
        # Recovery: with the load gone, requests are admitted again.
        for i in range(4):
            status, _, _ = await _post(client, model, i, [])
            assert status == 200
