"""Promote a version to an alias if it passes the gate; roll back to the previous one.

The gate measures what it lacks: for each required suite it uses the latest
successful run of the same suite with the same params and data (the
``params_hash``) and starts one when there is none, for the candidate and for
the alias's current version alike. Every decision leaves an audit event:
``promote``, ``promote_refused``, ``force_promote`` or ``rollback``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db import registry
from services.common.db.registry import AuditEvent, ModelAlias

from . import gate

log = logging.getLogger(__name__)


class PromotionError(LookupError):
    """The alias or version does not exist, or there is nothing to roll back to."""


@dataclass
class Outcome:
    promoted: bool
    alias: str
    version: str
    previous_version: str = ""
    checks: list[gate.Check] = field(default_factory=list)
    message: str = ""
    forced: bool = False


class Promoter:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], runs, requirements: list[gate.Requirement],
                 rollout) -> None:
        self.sessions = sessions
        self.runs = runs  # services.eval.runner.RunManager
        self.requirements = requirements
        self.rollout = rollout

    async def _measure(self, version: str, req: gate.Requirement):
        """The latest comparable successful run, or a fresh one; (run or None, error)."""
        from services.eval.suites import build_suite

        suite = build_suite(req.suite, req.params, self.runs.settings.all_data_dirs())
        run = await self.runs.store.latest_succeeded(version, req.suite, suite.fingerprint())
        if run is None:
            created = await self.runs.create(version, req.suite, req.params, created_by="gate", keep_serving=True)
            await self.runs.wait(created.id)
            run = await self.runs.store.get(created.id)
        if run.status != "succeeded":
            return None, f"the {req.suite} run {run.id} of {version} {run.status}: {run.error}"
        if req.metric not in run.metrics:
            return None, f"the {req.suite} run {run.id} has no metric '{req.metric}'"
        return run, ""

    async def check(self, candidate: str, current: str | None) -> list[gate.Check]:
        checks = []
        for req in self.requirements:
            cand_run, err = await self._measure(candidate, req)
            cur_run = (await self._measure(current, req))[0] if current and current != candidate else None
            c = gate.evaluate(req, cand_run.metrics[req.metric] if cand_run else None,
                              cur_run.metrics[req.metric] if cur_run else None, candidate_error=err)
            c.candidate_run_id, c.current_run_id = (cand_run.id if cand_run else ""), (cur_run.id if cur_run else "")
            checks.append(c)
        return checks

    async def promote(self, alias: str, version: str, *, actor: str, force: bool = False) -> Outcome:
        async with self.sessions() as s:
            row = await registry.get_version(s, version)
            current = await s.get(ModelAlias, alias)
        if row is None:
            raise PromotionError(f"The model version '{version}' is not registered.")
        previous = current.version_id if current else ""
        if previous == version:
            return Outcome(True, alias, version, previous, message=f"{alias} already points at {version}")
        checks = await self.check(version, previous or None)
        passed = all(c.passed for c in checks)
        details = {"checks": [asdict(c) for c in checks], "previous": previous}
        if not passed and not force:
            await self._audit(actor, "promote_refused", alias, {"version_id": version, **details})
            await self.runs.release_held(version)  # a candidate started for the gate stops (unless in use)
            failed = "; ".join(c.reason for c in checks if not c.passed)
            return Outcome(False, alias, version, previous, checks, f"promotion refused: {failed}")
        self.runs.held.discard(version)  # promoted: it serves the alias now
        action = "promote" if passed else "force_promote"
        async with self.sessions() as s:
            await registry.set_alias(s, alias, version, actor=actor, action=action, details=details)
        served = await self._serve(alias, row)
        log.info("%s: %s → %s by %s (%s)", action, alias, version, actor, served)
        msg = f"{alias} now points at {version}" + ("" if passed else " (forced past a failed gate)")
        return Outcome(True, alias, version, previous, checks, msg, forced=not passed)

    async def rollback(self, alias: str, *, actor: str) -> Outcome:
        async with self.sessions() as s:
            current = await s.get(ModelAlias, alias)
            target = (await registry.get_version(s, current.previous_version_id)
                      if current and current.previous_version_id else None)
        if current is None:
            raise PromotionError(f"The alias '{alias}' does not exist.")
        if target is None:
            raise PromotionError(f"The alias '{alias}' has no previous version to roll back to.")
        async with self.sessions() as s:
            await registry.set_alias(s, alias, target.id, actor=actor, action="rollback",
                                     details={"from": current.version_id})
        await self._serve(alias, target)
        return Outcome(True, alias, target.id, current.version_id, message=f"{alias} rolled back to {target.id}")

    async def _serve(self, alias: str, row: registry.ModelVersion) -> dict:
        """Make the workers serve what the alias now points at. An adapter needs nothing: the router reads the
        alias from the registry and sends it to the workers of the adapter's base."""
        if registry.is_adapter(row):
            return {"serving": [f"adapter of {row.parent}"], "drained": []}
        return await self.rollout.apply(alias, row.id, row.path)

    async def _audit(self, actor: str, action: str, target: str, details: dict) -> None:
        async with self.sessions() as s:
            s.add(AuditEvent(actor=actor, action=action, target=target, details=details))
            await s.commit()
