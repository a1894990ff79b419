"""The life of an eval run: validate, queue, run as a task, record exactly one final status.

``create`` refuses bad input before anything is stored (unknown suite, bad
params, missing dataset, unknown model). A stored run then moves
queued → running → succeeded | failed | cancelled. Only a suite that returned
normally with finite metrics is stored as succeeded; everything else records
the error and no metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db import registry

from .client import ModelClient, ModelOutputError, UpstreamError
from .config import EvalSettings
from .store import RunStore
from .suites import RunContext, Suite, SuiteError, build_suite

log = logging.getLogger(__name__)


class UnknownModel(LookupError):
    pass


@dataclass(slots=True)
class Target:
    version: str
    """Registry version id, or the served name of an unregistered model."""
    path: str | None
    """Model store path when registered (the router can start a worker from it)."""


class RunManager:
    def __init__(self, settings: EvalSettings, sessions: async_sessionmaker[AsyncSession],
                 client: ModelClient) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = RunStore(sessions)
        self.client = client
        self.held: set[str] = set()
        """Versions the router started for a gate's run (``keep_serving``): the promoter releases them if it
        refuses the candidate."""
        self.tasks: dict[str, asyncio.Task] = {}

    async def resolve(self, name: str) -> Target:
        """An alias, a version id or a bare name from the registry; else a model the router serves."""
        async with self.sessions() as s:
            version = await registry.resolve(s, name)
        if version is not None:
            return Target(version.id, version.path)
        served = await self.client.served_models()
        if name in served:
            return Target(served[name].parent or name, None)
        raise UnknownModel(f"The model '{name}' is neither a registered version or alias nor served by any worker.")

    async def create(self, model: str, suite_name: str, params: dict, created_by: str = "", owner: str = "",
                     keep_serving: bool = False):
        """Store and start a run. A version the router starts for it is released when the run ends (stopped
        unless an alias points at it or other requests use it), except with ``keep_serving`` (the promotion
        gate: a candidate that passes is served next)."""
        suite = build_suite(suite_name, params, self.settings.all_data_dirs())
        target = await self.resolve(model)
        row = await self.store.create(model=model, model_version=target.version, suite=suite_name,
                                      params=suite.params.model_dump(), params_hash=suite.fingerprint(),
                                      created_by=created_by, owner=owner)
        self.tasks[row.id] = asyncio.create_task(self._execute(row.id, suite, target, keep_serving), name=row.id)
        self.tasks[row.id].add_done_callback(lambda _t, rid=row.id: self.tasks.pop(rid, None))
        return row

    async def wait(self, run_id: str) -> None:
        task = self.tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)

    async def cancel(self, run_id: str):
        task = self.tasks.get(run_id)
        if task is not None:
            task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), 30)
            except (TimeoutError, asyncio.CancelledError):
                pass
        return await self.store.get(run_id)

    async def _route_to(self, target: Target) -> bool:
        """Make the target routable (the router starts a registered version nobody serves); True when this
        call started it."""
        wait = self.settings.serve_timeout_s
        resp = await self.client.ensure_served(target.version, wait)
        if not resp.ready:
            raise UpstreamError(f"'{target.version}' was not ready within {wait:.0f}s")
        return resp.started

    async def _execute(self, run_id: str, suite: Suite, target: Target, keep_serving: bool = False) -> None:
        started = time.monotonic()
        launched = False
        try:
            await self.store.mark_running(run_id)
            launched = await self._route_to(target)
            ctx = RunContext(model=target.version, client=self.client,
                             data_dirs=self.settings.all_data_dirs(), concurrency=self.settings.concurrency,
                             settings=self.settings, on_progress=self._progress_writer(run_id))
            result = await suite.run(ctx)
            _check_finite(result.metrics)
            await self.store.finish_succeeded(run_id, result.metrics, result.samples, started)
            log.info("eval %s succeeded: %s", run_id,
                     json.dumps({k: round(v["value"], 4) for k, v in result.metrics.items()}))
        except asyncio.CancelledError:
            await asyncio.shield(self.store.finish_unsuccessfully(run_id, "cancelled", "cancelled by request", started))
            log.info("eval %s cancelled", run_id)
        except (ModelOutputError, UpstreamError, SuiteError) as exc:
            await self.store.finish_unsuccessfully(run_id, "failed", f"{type(exc).__name__}: {exc}", started)
            log.warning("eval %s failed: %s", run_id, exc)
        except Exception as exc:  # a bug must still leave a final status, never a stuck 'running'
            log.exception("eval %s crashed", run_id)
            await self.store.finish_unsuccessfully(run_id, "failed", f"internal error: {exc!r}", started)
        finally:
            if launched and keep_serving:
                self.held.add(target.version)
            elif launched:
                await asyncio.shield(self.release(target.version))

    async def release_held(self, version: str) -> None:
        """Release ``version`` if a gate's run had it started (else something else started it: it stays)."""
        if version in self.held:
            self.held.discard(version)
            await self.release(version)

    async def release(self, version: str) -> None:
        """Stop a version started for an eval, unless something else serves it now."""
        try:
            resp = await self.client.release(version)
            log.info("%s after its eval: %s", version, "stopped" if resp.stopped else f"kept ({resp.reason})")
        except UpstreamError as exc:
            log.warning("could not release %s after its eval: %s", version, exc)

    def _progress_writer(self, run_id: str):
        last = [0.0]

        async def write(done: int, total: int) -> None:
            # At most one progress write a second; the final count is written with the result.
            now = time.monotonic()
            if done == 0 or now - last[0] >= 1.0:
                last[0] = now
                await self.store.progress(run_id, done, total)

        return write

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def _check_finite(metrics: dict[str, dict]) -> None:
    for name, m in metrics.items():
        if not all(math.isfinite(m[k]) for k in ("value", "stderr", "ci_low", "ci_high")):
            raise ModelOutputError(f"metric '{name}' is not finite ({m['value']})")
