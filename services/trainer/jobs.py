"""Creating a job: every check that can fail fast happens here, before a row exists.

A request that cannot work (unknown model or recipe, a file that does not
exist, hyperparameters of the wrong type, a model that cannot fit in memory)
is refused with a :class:`RequestError` the gateway turns into an OpenAI 4xx.
Checks that need to read the data (a JSONL path's content) run after creation,
in the ``validating_files`` state.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db.job_tables import TERMINAL_STATUSES, Job, TrainingFile

from . import memory, repo
from .datafile import InvalidFile, check_recipe_format
from .spec import JobPaths, SpecError, build_spec, check_extra, choose_recipe, complete_steps, resolve_hyperparameters
from .store import NAME_RE, ModelStore


@dataclass(frozen=True)
class JobLimits:
    """Fair use: what one owner's jobs may ask for (``TrainerSettings``)."""

    max_active_per_owner: int = 4
    max_steps: int = 1_000_000
    max_nodes: int = 16
    max_nproc_per_node: int = 8


class RequestError(Exception):
    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 not_found: bool = False, exhausted: bool = False) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.not_found = message, param, code, not_found
        self.exhausted = exhausted  # a fair-use cap, not a bad request: 429


@dataclass
class NewJob:
    model: str
    training_file: str
    validation_file: str = ""
    hyperparameters: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)
    suffix: str = ""
    seed: int = -1
    metadata: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    owner: str = ""
    # An admin key (or a deployment without an internal secret) may train on any owner's files and on
    # JSONL paths in the store; any other key only on files its owner uploaded.
    admin: bool = True


@dataclass(frozen=True)
class DataRef:
    path: str
    examples: int | None
    format: str | None


class JobFactory:
    def __init__(self, store: ModelStore, runner, data_dirs: list[Path], limits: JobLimits | None = None,
                 evals: bool = False) -> None:
        self.store, self.runner = store, runner
        self.evals = evals
        """Whether jobs may name eval suites (an eval service is configured)."""
        self.limits = limits or JobLimits()
        self.data_roots = [store.root.resolve(), *(Path(d).resolve() for d in data_dirs)]

    async def data_ref(self, session: AsyncSession, ref: str, param: str, req: NewJob) -> DataRef:
        """An uploaded file id, or a JSONL path under the store or a configured data folder (admin only)."""
        if ref.startswith("file-"):
            row = await session.get(TrainingFile, ref)
            if row is None or not (req.admin or row.owner == req.owner):
                raise RequestError(f"Invalid {param}: no file with id '{ref}' exists.", param=param,
                                   code="invalid_file")
            return DataRef(row.path, row.examples, row.format)
        if not req.admin:
            raise RequestError(f"Invalid {param}: use the id of a file you uploaded (file-…).", param=param,
                               code="invalid_file")
        path = Path(ref)
        if not path.is_absolute() or not any(path.resolve().is_relative_to(r) for r in self.data_roots):
            raise RequestError(f"Invalid {param}: use a file id (file-…) or an absolute JSONL path under "
                               f"{', '.join(map(str, self.data_roots))}.", param=param, code="invalid_file")
        if not path.resolve().is_file():
            raise RequestError(f"Invalid {param}: {ref} does not exist.", param=param, code="invalid_file")
        return DataRef(str(path.resolve()), None, None)

    def _check_resources(self, extra: dict) -> tuple[int, int]:
        res = extra.get("resources") or {}
        nodes, nproc = res.get("nodes", 1), res.get("nproc_per_node") or self.runner.default_nproc
        if nodes > 1 and not self.runner.supports_nodes:
            raise RequestError(f"resources.nodes={nodes} needs the kubernetes runner; this service runs jobs as "
                               "local processes (use nproc_per_node).", param="resources.nodes")
        return nodes, nproc

    def _check_memory(self, base: dict, recipe: str, hparams: dict, nodes: int, nproc: int) -> None:
        cfg = memory.read_config(base["base"]) if "base" in base else None
        budget, gpu = self.runner.memory_budget()
        problem = memory.fit_problem(cfg, recipe=recipe, hparams=hparams, budget_bytes=budget, processes=nproc,
                                     gpu=gpu, shards=nodes * nproc if gpu else 1)
        if problem:
            raise RequestError(problem, param="hyperparameters", code="insufficient_memory")

    async def _data(self, session: AsyncSession, req: NewJob, recipe: str) -> tuple[DataRef, DataRef | None]:
        train = await self.data_ref(session, req.training_file, "training_file", req)
        val = await self.data_ref(session, req.validation_file, "validation_file", req) if req.validation_file \
            else None
        for ref, param in ((train, "training_file"), (val, "validation_file")):
            if ref is not None and ref.format:
                try:
                    check_recipe_format(recipe, ref.format)
                except InvalidFile as exc:
                    raise RequestError(f"Invalid {param}: {exc}.", param=param, code="invalid_file") from None
        return train, val

    async def _check_fair_use(self, session: AsyncSession, req: NewJob, extra: dict) -> None:
        lim = self.limits
        res = extra.get("resources") or {}
        for key, most in (("nodes", lim.max_nodes), ("nproc_per_node", lim.max_nproc_per_node)):
            if res.get(key, 0) > most:
                raise RequestError(f"resources.{key}={res[key]} is more than this service allows ({most}).",
                                   param=f"resources.{key}")
        if req.admin:
            return
        active = await session.scalar(select(func.count()).select_from(Job).where(
            Job.owner == req.owner, Job.status.not_in(TERMINAL_STATUSES)))
        if active >= lim.max_active_per_owner:
            raise RequestError(f"Your organization has {active} fine-tuning jobs that have not ended; at most "
                               f"{lim.max_active_per_owner} may be active at once. Wait for one to finish or cancel "
                               "one.", code="too_many_active_jobs", exhausted=True)

    async def create(self, session: AsyncSession, req: NewJob) -> Job:
        try:
            extra = check_extra(req.extra)
            recipe = choose_recipe(req.method, extra)
        except SpecError as exc:
            raise RequestError(str(exc), param=exc.param) from None
        if "evals" in extra and not self.evals:
            raise RequestError("evals: this deployment has no eval service (LLMSVC_TRAINER_EVAL_ADDR is not set).",
                               param="evals")
        await self._check_fair_use(session, req, extra)
        base = await self.store.resolve_base(session, req.model)
        if base is not None and not req.admin and not await self.store.usable_by(session, base, req.owner):
            base = None  # another owner's model: as absent as one that never was
        if base is None:
            raise RequestError(f"The model '{req.model}' does not exist: name a registered model version or alias, "
                               "a model folder in the store, or preset:<name>.", param="model",
                               code="model_not_found", not_found=True)
        train, val = await self._data(session, req, recipe)
        if req.suffix and not NAME_RE.match(req.suffix):
            raise RequestError("suffix may hold letters, digits, '.', '_' and '-' (at most 64, not starting with "
                               "'.' or '-').", param="suffix")
        seed = req.seed if req.seed >= 0 else secrets.randbelow(2**31)
        try:
            hparams = resolve_hyperparameters(req.hyperparameters, req.method, recipe, train.examples, seed)
        except SpecError as exc:
            raise RequestError(str(exc), param=exc.param) from None
        if (hparams.get("steps") or 0) > self.limits.max_steps:
            raise RequestError(f"The job would run {hparams['steps']} steps; at most {self.limits.max_steps}. Ask "
                               "for fewer epochs or steps.", param="hyperparameters")
        self._check_memory(base.spec, recipe, hparams, *self._check_resources(extra))
        output_name = req.suffix or f"{base.name}-ft"
        try:  # the job's own spec, as it will be written at launch: what the job would refuse is refused now
            build_spec(recipe=recipe, model=dict(base.spec), train=train.path, validation=val.path if val else None,
                       hparams=complete_steps(hparams, train.examples or 1), extra=extra,
                       paths=JobPaths(Path("job")), name=output_name)
        except SpecError as exc:
            raise RequestError(str(exc), param=exc.param) from None
        job = Job(id=f"ftjob-{secrets.token_hex(12)}", status="validating_files", model=req.model,
                  base={**base.spec, "parent": base.parent}, recipe=recipe, training_file=req.training_file,
                  validation_file=req.validation_file or None, hyperparameters=hparams,
                  method=req.method or {"type": "dpo" if recipe == "dpo" else "supervised"},
                  extra={**extra, "train_path": train.path, "validation_path": val.path if val else None},
                  suffix=req.suffix, output_name=output_name, seed=seed,
                  job_metadata=req.metadata, owner=req.owner, runner=self.runner.name)
        session.add(job)
        await repo.add_event(session, job.id, f"Created fine-tuning job: {job.id}")
        await repo.add_event(session, job.id, f"Validating training file: {req.training_file}")
        await session.commit()
        return job
