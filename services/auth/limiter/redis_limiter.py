"""The shared limiter: one Lua script per admission, one per settlement, in Redis.

Every key of one API key carries the hash tag ``{key_id}``, so the script's
keys live in one slot and the same code runs on Redis Cluster. Redis runs a
script atomically, so any number of auth replicas share one exact window.
"""

from __future__ import annotations

import asyncio
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .base import (
    DEFAULT_WINDOW,
    Decision,
    Limiter,
    LimiterUnavailable,
    Limits,
    RateState,
    WindowConfig,
    new_reservation_id,
)

_ADMIT = resources.files(__package__).joinpath("admit.lua").read_text()
_SETTLE = resources.files(__package__).joinpath("settle.lua").read_text()


class RedisLimiter(Limiter):
    backend = "r"

    def __init__(self, client: aioredis.Redis, prefix: str, cfg: WindowConfig = DEFAULT_WINDOW,
                 timeout_s: float = 0.5) -> None:
        self.client = client
        self.prefix = prefix
        self.cfg = cfg
        self.timeout_s = timeout_s
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    def _keys(self, key_id: str, rid: str) -> list[str]:
        base = f"{self.prefix}rl:{{{key_id}}}:"
        return [base + s for s in ("req", "tok", "amt", "sum", "cc", "day")] + [f"{base}res:{rid}"]

    async def _call(self, script, keys: list[str], args: list) -> list:
        try:
            async with asyncio.timeout(self.timeout_s):  # unlike wait_for, no extra task per call
                return await script(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise LimiterUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def admit(self, key_id: str, limits: Limits, reserve_tokens: int) -> Decision:
        rid = new_reservation_id(self.backend)
        args = [rid, reserve_tokens, int(self.cfg.window_s * 1000), limits.rpm, limits.tpm, limits.daily_tokens,
                limits.max_concurrent, int(self.cfg.lease_s * 1000)]
        allowed, code, wait, rem_req, reset_req, rem_tok, reset_tok = await self._call(
            self._admit, self._keys(key_id, rid), args)
        state = RateState(limits.rpm, int(rem_req), int(reset_req) / 1000, limits.tpm, int(rem_tok),
                          int(reset_tok) / 1000)
        code = code.decode() if isinstance(code, bytes) else code
        if not int(allowed):
            return Decision(False, code, int(wait) / 1000, state)
        return Decision(True, "", 0.0, state, rid if reserve_tokens > 0 else "")

    async def settle(self, key_id: str, reservation_id: str, used_tokens: int) -> bool:
        keys = self._keys(key_id, reservation_id)
        done = await self._call(self._settle, [keys[1], keys[2], keys[3], keys[4], keys[5], keys[6]],
                                [reservation_id, used_tokens])
        return bool(int(done))

    async def close(self) -> None:
        await self.client.aclose()
