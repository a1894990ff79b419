"""A small load client for the end-to-end router tests: streaming chat over raw SSE with httpx,
so that error events and a missing ``[DONE]`` are seen exactly as a client sees them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx

OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}


@dataclass
class StreamResult:
    status: int
    tokens: int = 0
    done: bool = False
    finish_reason: str | None = None
    error: dict | None = None
    headers: dict = field(default_factory=dict)
    body: dict | None = None

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.done and self.error is None and self.finish_reason is not None

    @property
    def broken_cleanly(self) -> bool:
        """Started, then ended with an OpenAI-shaped error event followed by ``[DONE]``."""
        return (self.status == 200 and self.done and self.error is not None
                and set(self.error.get("error", {})) == OPENAI_ERROR_KEYS)


async def stream_chat(client: httpx.AsyncClient, model: str, content: str, max_tokens: int,
                      started: asyncio.Event | None = None, **extra) -> StreamResult:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": True, **extra}
    async with client.stream("POST", "/chat/completions", json=body) as resp:
        result = StreamResult(resp.status_code, headers=dict(resp.headers))
        if resp.status_code != 200:
            result.body = json.loads(await resp.aread())
            return result
        async for line in resp.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                result.done = True
                continue
            doc = json.loads(payload)
            if "error" in doc:
                result.error = doc
                continue
            for choice in doc.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    result.tokens += 1
                    if started is not None:
                        started.set()
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
    return result


def client_for(base_url: str, api_key: str, timeout_s: float = 120.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    return httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"},
                             timeout=timeout_s, limits=limits)
