"""Revocation and expiry reach every replica within the stated bound.

Stated bound: a revoked key is refused by every replica within ``key_cache_ttl_s``
(default 5 s) with or without Redis; with Redis, the revoking replica's
pub/sub message makes it immediate in practice. Expiry is checked on every
request, so it needs no propagation at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from services.common.db.base import utcnow
from services.common.pb import auth_pb2 as pb

from .conftest import REDIS_URL, auth_server, create_key


@contextlib.asynccontextmanager
async def three(tmp_path, auth_db, admin_secret, **overrides):
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(auth_server(tmp_path / str(i), auth_db, admin_secret, **overrides))
               for i in range(3)]


async def decision(replica, secret: str) -> int:
    return (await replica.auth.Admit(pb.AdmitRequest(api_key=secret, model="m", reserve_tokens=0))).decision


async def test_revocation_without_redis_is_bounded_by_the_cache_ttl(tmp_path, auth_db, admin_secret):
    ttl = 1.0
    async with three(tmp_path, auth_db, admin_secret, key_cache_ttl_s=ttl) as replicas:
        key = await create_key(replicas[0].admin, replicas[0].admin_md, name="revoke-ttl")
        assert [await decision(r, key.secret) for r in replicas] == [pb.DECISION_ALLOWED] * 3  # all cached
        await replicas[0].admin.RevokeKey(pb.KeyRef(key_id=key.key.id), metadata=replicas[0].admin_md)
        assert await decision(replicas[0], key.secret) == pb.DECISION_UNAUTHENTICATED  # at once where revoked
        # Any entry cached before the revocation was committed is stale `ttl` later.
        await asyncio.sleep(ttl)
        assert [await decision(r, key.secret) for r in replicas] == [pb.DECISION_UNAUTHENTICATED] * 3


async def test_revocation_with_redis_reaches_every_replica_through_pubsub(tmp_path, auth_db, admin_secret,
                                                                        redis_prefix):
    # An hour-long TTL: only the pub/sub message can explain the refusals.
    async with three(tmp_path, auth_db, admin_secret, key_cache_ttl_s=3600, redis_url=REDIS_URL,
                     redis_prefix=redis_prefix) as replicas:
        await asyncio.gather(*(asyncio.wait_for(r.runtime.invalidation.subscribed.wait(), 10) for r in replicas))
        key = await create_key(replicas[0].admin, replicas[0].admin_md, name="revoke-pubsub")
        assert [await decision(r, key.secret) for r in replicas] == [pb.DECISION_ALLOWED] * 3
        await replicas[1].admin.RevokeKey(pb.KeyRef(key_id=key.key.id), metadata=replicas[1].admin_md)

        async def refused(r) -> None:
            while await decision(r, key.secret) != pb.DECISION_UNAUTHENTICATED:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(asyncio.gather(*(refused(r) for r in replicas)), 10)


async def test_expiry_applies_on_every_replica_without_propagation(tmp_path, auth_db, admin_secret):
    async with three(tmp_path, auth_db, admin_secret, key_cache_ttl_s=3600) as replicas:
        expires = utcnow() + timedelta(seconds=1.5)
        key = await create_key(replicas[0].admin, replicas[0].admin_md, name="expiring",
                               expires_at=expires.isoformat())
        assert [await decision(r, key.secret) for r in replicas] == [pb.DECISION_ALLOWED] * 3
        await asyncio.sleep(max(0.0, (expires - utcnow()).total_seconds()))
        assert [await decision(r, key.secret) for r in replicas] == [pb.DECISION_UNAUTHENTICATED] * 3


async def test_bootstrap_key_is_upserted_and_a_new_secret_replaces_the_old(tmp_path, auth_db, admin_secret):
    async with auth_server(tmp_path / "a", auth_db, admin_secret) as a:
        listed = await a.admin.ListKeys(pb.ListKeysRequest(include_revoked=True), metadata=a.admin_md)
        boot = [k for k in listed.keys if k.id == "bootstrap"]
        assert boot and set(boot[0].scopes) == {"chat", "train", "eval", "admin"}
    rotated = admin_secret + "-rotated"
    async with auth_server(tmp_path / "b", auth_db, rotated) as b:
        assert await decision(b, rotated) == pb.DECISION_ALLOWED
        assert await decision(b, admin_secret) == pb.DECISION_UNAUTHENTICATED
    async with auth_server(tmp_path / "c", auth_db, admin_secret) as c:  # and back, for the other tests
        assert await decision(c, admin_secret) == pb.DECISION_ALLOWED


async def test_a_flood_of_unknown_keys_never_evicts_a_real_one(tmp_path, auth_db, admin_secret):
    """Unknown key prefixes are remembered apart (``key_cache_max_unknown``): 300 random keys against a limit
    of 50 evict each other, and the real key admitted before them is still answered from the cache (no
    database read); each wrong key is refused as before, and a repeated one is a cache hit."""
    import secrets

    from prometheus_client import REGISTRY

    def count(outcome: str) -> float:
        return REGISTRY.get_sample_value("llmsvc_auth_key_cache_total", {"outcome": outcome}) or 0.0

    async with auth_server(tmp_path, auth_db, admin_secret, key_cache_ttl_s=3600, key_cache_max_unknown=50) as a:
        key = await create_key(a.admin, a.admin_md, name="real")
        assert (await a.auth.Admit(pb.AdmitRequest(api_key=key.secret))).decision == pb.DECISION_ALLOWED
        wrong = [f"sk-{secrets.token_urlsafe(32)}" for _ in range(300)]
        for w in wrong:
            assert (await a.auth.Admit(pb.AdmitRequest(api_key=w))).decision == pb.DECISION_UNAUTHENTICATED
        cache = a.runtime.gate.cache
        assert len(cache._unknown) == 50 and len(cache._entries) >= 1
        hits, misses = count("hit"), count("miss")
        assert (await a.auth.Admit(pb.AdmitRequest(api_key=key.secret))).decision == pb.DECISION_ALLOWED
        assert (count("hit"), count("miss")) == (hits + 1, misses)
        assert (await a.auth.Admit(pb.AdmitRequest(api_key=wrong[-1]))).decision == pb.DECISION_UNAUTHENTICATED
        assert (count("hit"), count("miss")) == (hits + 2, misses)
