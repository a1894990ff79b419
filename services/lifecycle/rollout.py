"""Make the workers serve what the registry says an alias points at, without failing requests.

Embedded (local processes): make sure a worker serves the new version (the
router starts one on demand if none does), add the alias to it (``SetAliases``), wait until
the router sees the alias there, then ``Drain`` every worker that still
answers to the alias for another version. A draining worker turns NOT_SERVING
and reports ``draining``, so the router sends it nothing new, while its
in-flight streams run to completion within its grace period; then it exits.

In a cluster whose router starts versions on demand (the chart): :class:`OnDemandRollout`. With a fixed
worker Deployment per alias: :mod:`services.lifecycle.kubernetes` (a rolling update of that Deployment with
``maxUnavailable: 0``).
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from services.common.grpcutil import insecure_channel, request_metadata
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc, router_pb2

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    pass


class EmbeddedRollout:
    def __init__(self, router_stub, timeout_s: float = 300.0) -> None:
        self.router = router_stub
        self.timeout_s = timeout_s

    async def _workers(self) -> list:
        resp = await self.router.ListWorkers(router_pb2.ListWorkersRequest(), timeout=10.0, metadata=request_metadata())
        return [w for w in resp.workers if w.healthy and not w.load.draining and w.load.models]

    async def _call(self, address: str, method: str, request):
        channel = insecure_channel(address)
        try:
            return await getattr(inference_pb2_grpc.InferenceStub(channel), method)(request, timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            raise RolloutError(f"{method} on {address} failed: {exc.code().name} {exc.details()}") from None
        finally:
            await channel.close()

    async def _ensure_served(self, version: str) -> list:
        """The healthy workers of ``version``, which the router starts on demand if none serves it."""
        try:
            ask = router_pb2.EnsureServedRequest(model=version, wait_s=self.timeout_s)
            ensured = await self.router.EnsureServed(ask, timeout=self.timeout_s + 30.0, metadata=request_metadata())
        except grpc.aio.AioRpcError as exc:
            raise RolloutError(f"the router could not serve {version}: {exc.code().name} {exc.details()}") from None
        if not ensured.ready:
            raise RolloutError(f"{version} was not ready within {self.timeout_s:.0f}s")
        new = [w for w in await self._workers() if w.load.models[0] == version]
        if not new:
            raise RolloutError(f"no healthy worker serves {version}; start one before promoting")
        return new

    async def apply(self, alias: str, version: str, path: str | None) -> dict:
        """Returns ``{"serving": [addresses], "drained": [addresses]}``."""
        new = await self._ensure_served(version)
        for w in new:
            aliases = [m for m in w.load.models[1:] if m != alias] + [alias]
            await self._call(w.address, "SetAliases", pb.SetAliasesRequest(aliases=aliases))
        await self._wait(lambda ws: all(alias in w.load.models for w in ws if w.address in {n.address for n in new}))
        old = [w for w in await self._workers() if alias in w.load.models and w.load.models[0] != version]
        for w in old:
            log.info("draining %s (%s) after moving %s to %s", w.address, w.load.models[0], alias, version)
            await self._call(w.address, "Drain", pb.DrainRequest())
        # Done means new requests reach the new version only: wait until the router routes none to the old ones.
        drained = {w.address for w in old}
        await self._wait(lambda ws: not any(w.address in drained for w in ws), "stop routing to the drained workers")
        return {"serving": [w.address for w in new], "drained": [w.address for w in old]}

    async def _wait(self, ready, what: str = "see the alias on the new worker") -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if ready(await self._workers()):
                return
            await asyncio.sleep(0.25)
        raise RolloutError(f"the router did not {what} in time")


class OnDemandRollout(EmbeddedRollout):
    """In a cluster (the chart's choice when the router starts versions as worker Deployments): the registry
    already says where the alias points, and the router follows it (an alias goes to a worker of the version
    it names; a worker that still answers to it for another version serves it only while that version
    starts). So a promotion makes sure the version is served (the router starts its Deployment) and has it
    ready before it returns; nothing is drained. The chart's own worker Deployment keeps serving its version
    under that version's id (pods it restarts claim the alias again from their environment, which the router
    no longer follows), and a version the router started stops once idle with no alias on it."""

    async def apply(self, alias: str, version: str, path: str | None) -> dict:
        return {"serving": [w.address for w in await self._ensure_served(version)], "drained": []}


class RegistryOnlyRollout:
    """Moves nothing: for deployments whose workers follow the registry by other means."""

    async def apply(self, alias: str, version: str, path: str | None) -> dict:
        return {"serving": [], "drained": []}
