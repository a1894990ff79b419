"""The limiter semantics, run against both backends: Redis (Lua) and in-process.

The in-process limiter takes an injected clock, so the time-dependent cases
(the window slides, retry-after is exact) run on a fake clock with no waiting.
Redis uses its own clock (TIME inside the script); its time-dependent case
uses a 1-second window and waits for the retry-after it was given.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from services.auth.limiter import Limits, MemoryLimiter, RedisLimiter, WindowConfig

from .conftest import REDIS_URL


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis"])
async def limiter(request, redis_prefix):
    if request.param == "memory":
        yield MemoryLimiter(WindowConfig(60.0, 900.0), clock=FakeClock())
        return
    client = aioredis.from_url(REDIS_URL)
    yield RedisLimiter(client, redis_prefix)
    keys = [k async for k in client.scan_iter(f"{redis_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def admit_n(limiter, n, limits, reserve, key="k"):
    return [await limiter.admit(key, limits, reserve) for _ in range(n)]


async def test_requests_per_window_are_exact(limiter):
    lim = Limits(rpm=10, tpm=10**9)
    got = await admit_n(limiter, 15, lim, 1)
    assert [d.allowed for d in got] == [True] * 10 + [False] * 5
    assert [d.state.remaining_requests for d in got[:10]] == list(range(9, -1, -1))
    assert {d.code for d in got[10:]} == {"rate_limit_requests"}
    assert all(0 < d.retry_after_s <= 60 for d in got[10:])


async def test_tokens_reserve_then_settle_to_actual_usage(limiter):
    lim = Limits(rpm=1000, tpm=100)
    first = await admit_n(limiter, 4, lim, 30)
    assert [d.allowed for d in first] == [True, True, True, False]
    assert first[3].code == "rate_limit_tokens" and first[2].state.remaining_tokens == 10
    # Actual use was 5 tokens each: 75 tokens come back, room for two more reservations of 30.
    for d in first[:3]:
        assert await limiter.settle("k", d.reservation_id, 5)
    second = await admit_n(limiter, 3, lim, 30)
    assert [d.allowed for d in second] == [True, True, False]
    assert second[1].state.remaining_tokens == 100 - 15 - 60


async def test_settle_is_idempotent_and_cancel_releases_everything(limiter):
    lim = Limits(rpm=1000, tpm=60)
    a, b = await admit_n(limiter, 2, lim, 30)
    assert not (await limiter.admit("k", lim, 30)).allowed
    assert await limiter.settle("k", a.reservation_id, 0)  # cancelled before any token
    assert not await limiter.settle("k", a.reservation_id, 0)
    assert not await limiter.settle("k", "r.unknown", 0) and not await limiter.settle("k", "m.unknown", 0)
    assert (await limiter.admit("k", lim, 30)).allowed


async def test_usage_above_the_reservation_is_counted(limiter):
    lim = Limits(rpm=1000, tpm=100)
    (d,) = await admit_n(limiter, 1, lim, 10)
    await limiter.settle("k", d.reservation_id, 95)
    assert not (await limiter.admit("k", lim, 10)).allowed
    assert (await limiter.admit("k", lim, 5)).allowed


async def test_a_request_larger_than_tpm_says_so(limiter):
    d = await limiter.admit("k", Limits(rpm=10, tpm=100), 101)
    assert not d.allowed and d.code == "tokens_exceed_limit"


async def test_daily_quota(limiter):
    lim = Limits(rpm=1000, tpm=10**6, daily_tokens=100)
    got = await admit_n(limiter, 5, lim, 30)
    assert [d.allowed for d in got] == [True, True, True, False, False]
    assert got[3].code == "quota_exceeded"
    assert 0 < got[3].retry_after_s <= 86_400
    await limiter.settle("k", got[0].reservation_id, 0)
    assert (await limiter.admit("k", lim, 30)).allowed


async def test_concurrency_slots_free_on_settle(limiter):
    lim = Limits(rpm=1000, tpm=10**6, max_concurrent=2)
    a, b, c = await admit_n(limiter, 3, lim, 1)
    assert a.allowed and b.allowed and not c.allowed and c.code == "concurrency_limit"
    await limiter.settle("k", a.reservation_id, 1)
    assert (await limiter.admit("k", lim, 1)).allowed


async def test_zero_reservation_counts_only_as_a_request(limiter):
    lim = Limits(rpm=3, tpm=10, max_concurrent=1)
    got = await admit_n(limiter, 3, lim, 0)
    assert all(d.allowed and d.reservation_id == "" for d in got)
    assert got[-1].state.remaining_tokens == 10
    assert (await limiter.admit("k", lim, 0)).code == "rate_limit_requests"


async def test_keys_are_independent(limiter):
    lim = Limits(rpm=1, tpm=100)
    assert (await limiter.admit("a", lim, 1)).allowed
    assert (await limiter.admit("b", lim, 1)).allowed
    assert not (await limiter.admit("a", lim, 1)).allowed


async def test_longest_wait_wins_when_several_limits_are_hit(limiter):
    lim = Limits(rpm=1, tpm=10, daily_tokens=10)
    await limiter.admit("k", lim, 10)
    d = await limiter.admit("k", lim, 10)
    assert d.code == "quota_exceeded"  # the day ends later than the minute


async def test_window_slides_and_retry_after_is_exact_on_a_fake_clock():
    clock = FakeClock()
    lim_ = MemoryLimiter(WindowConfig(60.0, 900.0), clock=clock)
    lim = Limits(rpm=3, tpm=1000)
    for _ in range(3):  # at t0, t0+10, t0+20
        assert (await lim_.admit("k", lim, 100)).allowed
        clock.t += 10.0
    clock.t -= 5.0  # t0 + 25
    denied = await lim_.admit("k", lim, 100)
    assert not denied.allowed and denied.retry_after_s == pytest.approx(35.0)
    clock.t += 35.0 - 1e-6
    assert not (await lim_.admit("k", lim, 100)).allowed  # a sliding window: no reset at a boundary
    clock.t += 1e-6
    ok = await lim_.admit("k", lim, 100)
    assert ok.allowed and ok.state.remaining_requests == 0


async def test_token_retry_after_points_at_the_reservation_that_makes_room():
    clock = FakeClock()
    lim_ = MemoryLimiter(WindowConfig(60.0, 900.0), clock=clock)
    lim = Limits(rpm=100, tpm=100)
    for _ in range(4):
        assert (await lim_.admit("k", lim, 25)).allowed
        clock.t += 10.0
    d = await lim_.admit("k", lim, 50)  # needs the first two (t0, t0+10) to leave: at t0+70, now t0+40
    assert d.code == "rate_limit_tokens" and d.retry_after_s == pytest.approx(30.0)
    clock.t += 30.0
    assert (await lim_.admit("k", lim, 50)).allowed


async def test_redis_capacity_returns_after_the_retry_after_it_gave(redis_prefix):
    client = aioredis.from_url(REDIS_URL)
    lim_ = RedisLimiter(client, redis_prefix, WindowConfig(1.0, 10.0))
    try:
        lim = Limits(rpm=2, tpm=1000)
        assert (await lim_.admit("k", lim, 1)).allowed and (await lim_.admit("k", lim, 1)).allowed
        denied = await lim_.admit("k", lim, 1)
        assert not denied.allowed and 0 < denied.retry_after_s <= 1.0
        await asyncio.sleep(denied.retry_after_s + 0.002)  # Redis answers in whole milliseconds
        assert (await lim_.admit("k", lim, 1)).allowed
    finally:
        await client.delete(*[k async for k in client.scan_iter(f"{redis_prefix}*")])
        await client.aclose()
