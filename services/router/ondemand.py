"""Full model versions served on demand: started when first asked for, stopped when idle.

A request whose ``model`` is a registered full version (or an alias of one)
that no worker serves makes the router start a worker for it through a
:class:`~services.lifecycle.launcher.Launcher`: a child process on a free
worker slot in embedded mode, a worker Deployment in a cluster. The request
waits for the worker up to ``load_wait_s`` (never past its own deadline); past
that it is refused with 503 ``model_loading`` and a ``retry-after``, and the
start goes on, so a retry finds it ready. Requests for the same version share
one start.

At most ``max_versions`` versions run on demand at once. When no room is left,
the least recently used one with no request in flight and no alias pointing at
it is stopped to make room; when none qualifies, the request gets 503
``no_capacity``. A version idle for ``idle_stop_s`` is stopped the same way.
A start that fails (the worker exits) is that version's requests' error, and a
new start is tried only after ``retry_failed_s``.

Only versions this router started are stopped: the workers ``llmsvc up`` or the
chart runs are never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from services.lifecycle.launcher import Launcher, LaunchError

from .pool import WorkerPool

log = logging.getLogger(__name__)

STARTS = Counter("llmsvc_router_ondemand_starts_total", "Workers started on demand, by outcome.", ["outcome"])
STOPS = Counter("llmsvc_router_ondemand_stops_total", "On-demand versions stopped, by reason.", ["reason"])
RUNNING = Gauge("llmsvc_router_ondemand_versions", "Versions started on demand that are running or starting.")
for _outcome in ("started", "ready", "failed", "no_capacity"):
    STARTS.labels(_outcome)
for _reason in ("idle", "evicted", "released"):
    STOPS.labels(_reason)


SHARE_USE_S = 60.0
"""Least seconds between two records of a version's use for other router replicas (idle stop reads them)."""


class ModelLoading(Exception):
    """The version is starting; retry after ``retry_after_s``."""

    def __init__(self, version: str, retry_after_s: int, message: str) -> None:
        super().__init__(message)
        self.version, self.retry_after_s = version, retry_after_s


class NoCapacity(ModelLoading):
    """No room to start the version: every on-demand version is busy."""


class StartFailed(Exception):
    """The version's worker could not start."""


@dataclass
class Started:
    version: str
    path: str
    since: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    shared_at: float = 0.0
    """When this replica last recorded a use with the launcher (Kubernetes: an annotation on the Deployment)."""
    launched: bool = False
    error: str | None = None
    task: asyncio.Task | None = None


class OnDemand:
    def __init__(self, launcher: Launcher, pool: WorkerPool, *, max_versions: int = 1, load_wait_s: float = 60.0,
                 idle_stop_s: float = 600.0, start_timeout_s: float = 600.0, retry_failed_s: float = 30.0,
                 aliased=None) -> None:
        self.launcher, self.pool = launcher, pool
        self.max_versions = max_versions
        self.load_wait_s, self.idle_stop_s = load_wait_s, idle_stop_s
        self.start_timeout_s, self.retry_failed_s = start_timeout_s, retry_failed_s
        self.aliased = aliased
        """Async callable: the version ids some alias points at (kept running, whatever their use)."""
        self.started: dict[str, Started] = {}
        self.failed: dict[str, tuple[float, str]] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._touches: set[asyncio.Task] = set()

    # -- serving --------------------------------------------------------------------------------------------
    def touch(self, version: str) -> None:
        """A request for ``version`` (on every routed request: a dict lookup, and at most once per
        ``SHARE_USE_S`` a call that records the use where other router replicas see it)."""
        if (s := self.started.get(version)) is None:
            return
        s.last_used = now = time.monotonic()
        shared = getattr(self.launcher, "touch", None)
        if shared is not None and now - s.shared_at >= SHARE_USE_S:
            s.shared_at = now
            task = asyncio.get_running_loop().create_task(shared(version))
            self._touches.add(task)
            task.add_done_callback(self._touches.discard)

    async def ensure(self, version: str, path: str, wait_s: float | None = None) -> bool:
        """Make ``version`` routable, starting it if needed; True once it is, False when ``wait_s`` (default
        ``load_wait_s``) ran out first. Raises :class:`StartFailed` or :class:`NoCapacity`."""
        if self.pool.routable(version):
            self.touch(version)
            return True
        # A worker we did not start knows it (ejected for now, or still coming up): wait for it, start none.
        started = None if self.pool.claims(version) and version not in self.started else \
            await self._start(version, path)
        deadline = time.monotonic() + (self.load_wait_s if wait_s is None else max(0.0, wait_s))
        while True:
            if self.pool.routable(version):
                if started is not None:
                    self._mark_ready(started)
                self.touch(version)
                return True
            if started is None and not self.pool.claims(version):  # the worker that knew it did not come back
                started = await self._start(version, path)
            elif started is not None and started.ready_at is not None and self.launcher.failure(version):
                started = await self._start(version, path)  # it had served and has exited since: start it again
            if started is not None and (why := self._failure(version, started)):
                raise StartFailed(f"The model '{version}' could not be started: {why}.")
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.pool.wait_changed(min(left, 1.0))

    def _mark_ready(self, s: Started) -> None:
        if s.ready_at is None:
            s.ready_at = s.last_used = time.monotonic()  # idle time counts from ready, not from the start
            STARTS.labels("ready").inc()
            log.info("%s is ready after %.1fs", s.version, s.ready_at - s.since)

    def loading(self, version: str, asked: str = "") -> ModelLoading:
        s = self.started.get(version)
        elapsed = time.monotonic() - s.since if s else 0.0
        name = f"'{asked}' ({version})" if asked and asked != version else f"'{version}'"
        return ModelLoading(version, 5, f"The model {name} is loading (started {elapsed:.0f}s ago); retry shortly.")

    def _failure(self, version: str, started: Started) -> str | None:
        why = started.error or (self.launcher.failure(version) if started.launched else None)
        if why is None and time.monotonic() - started.since > self.start_timeout_s:
            why = f"its worker was not ready within {self.start_timeout_s:.0f}s"
        if why is not None:
            self.started.pop(version, None)
            self.failed[version] = (time.monotonic(), why)
            RUNNING.set(len(self.started))
            STARTS.labels("failed").inc()
            log.warning("on-demand start of %s failed: %s", version, why)
        return why

    async def _start(self, version: str, path: str) -> Started:
        async with self._lock:
            if (s := self.started.get(version)) is not None:
                exited = self.launcher.failure(version) is not None
                if s.ready_at is None or (not exited and self.pool.claims(version)):
                    return s
                if exited:
                    self._gone(s)  # it served, then exited (killed, or drained and gone): start it again
                else:  # drained by a rollout and still finishing: let it go, and start a new one
                    await self._stop(s, "drained")
            failed = self.failed.get(version)
            if failed and time.monotonic() - failed[0] < self.retry_failed_s:
                raise StartFailed(f"The model '{version}' could not be started: {failed[1]}.")
            if len(self.started) >= self.max_versions or self.launcher.free() == 0:
                await self._make_room(version)
            s = self.started[version] = Started(version, path)
            self.failed.pop(version, None)
            STARTS.labels("started").inc()
            RUNNING.set(len(self.started))
            log.info("starting %s on demand from %s", version, path)
            s.task = asyncio.create_task(self._launch(s))
            return s

    async def _launch(self, s: Started) -> None:
        """Start the worker once a slot is free (a version just stopped to make room frees its slot when its
        worker has exited); a failure is recorded on ``s`` for its requests."""
        deadline = time.monotonic() + 120.0
        while self.launcher.free() == 0:
            if time.monotonic() > deadline or self.started.get(s.version) is not s:
                s.error = s.error or "no worker slot came free within 120s"
                return
            await asyncio.sleep(0.25)
        try:
            await self.launcher.start(s.version, s.path)
            s.launched = True
        except LaunchError as exc:
            s.error = str(exc)
        except Exception as exc:  # a bug must not leave the version 'starting' until the timeout
            log.exception("starting %s failed", s.version)
            s.error = f"internal error: {exc!r}"

    def _in_flight(self, version: str) -> int:
        return sum(w.in_flight for w in self.pool.workers.values() if version in w.models)

    async def _stoppable(self) -> list[Started]:
        """Versions that may be stopped now, least recently used first: ready, idle, not aliased."""
        keep = await self.aliased() if self.aliased else set()
        for s in self.started.values():  # started with nobody waiting (a warm-up): ready all the same
            if s.ready_at is None and self.pool.routable(s.version):
                self._mark_ready(s)
        ready = [s for s in self.started.values()
                 if s.ready_at is not None and s.version not in keep and self._in_flight(s.version) == 0]
        return sorted(ready, key=lambda s: s.last_used)

    async def _make_room(self, version: str) -> None:
        victims = await self._stoppable()
        if not victims:
            STARTS.labels("no_capacity").inc()
            busy = ", ".join(sorted(self.started)) or "workers not started by the router"
            raise NoCapacity(version, 10, f"The model '{version}' cannot be started now: every worker slot "
                                          f"serves another version in use ({busy}); retry later.")
        await self._stop(victims[0], "evicted")  # its slot is free once its worker has exited (see _launch)

    def _gone(self, s: Started) -> None:
        log.info("%s's worker has exited", s.version)
        self.started.pop(s.version, None)
        RUNNING.set(len(self.started))

    async def _stop(self, s: Started, reason: str) -> None:
        self.started.pop(s.version, None)
        RUNNING.set(len(self.started))
        STOPS.labels(reason).inc()
        log.info("stopping %s (%s; last used %.0fs ago)", s.version, reason, time.monotonic() - s.last_used)
        await self.launcher.stop(s.version)
        self.pool.forget(s.version)

    async def release(self, version: str) -> tuple[bool, str]:
        """Stop ``version`` if this router started it and nothing else uses it."""
        async with self._lock:
            s = self.started.get(version)
            if s is None or s.ready_at is None:
                return False, f"'{version}' was not started on demand" if s is None else f"'{version}' is starting"
            if self.aliased and version in await self.aliased():
                return False, f"an alias points at '{version}'"
            if self._in_flight(version):
                return False, f"'{version}' has requests in flight"
            await self._stop(s, "released")
            return True, ""

    # -- idle stop ------------------------------------------------------------------------------------------
    async def stop_idle(self) -> list[str]:
        async with self._lock:
            for s in [s for s in self.started.values() if s.ready_at is not None]:
                if self.launcher.failure(s.version) is not None:
                    self._gone(s)
            now = time.monotonic()
            idle = [s for s in await self._stoppable() if now - s.last_used >= self.idle_stop_s]
            if (shared := getattr(self.launcher, "last_used", None)) is not None:
                # Another router replica may still serve it: its last use is recorded on the Deployment.
                idle = [s for s in idle if time.time() - (await shared(s.version) or 0.0) >= self.idle_stop_s]
            for s in idle:
                await self._stop(s, "idle")
            return [s.version for s in idle]

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(30.0, self.idle_stop_s / 4)))
            try:
                await self.stop_idle()
            except Exception:
                log.exception("idle check failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    def close(self) -> None:
        if self._task:
            self._task.cancel()
        self.launcher.close()
