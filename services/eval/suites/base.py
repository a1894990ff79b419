"""What every suite shares: typed parameters, datasets from allowed folders, the run context.

A suite is a class with a pydantic ``Params`` model (unknown keys refused, so
a typo is a 400, not a silently different eval) and an async ``run`` that
returns the metrics and one record per sample. It reports progress through
the context and never writes to the database itself: the runner stores a
result only when ``run`` returned, in one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..client import ModelClient


class SuiteError(ValueError):
    """The request names something the suite cannot run (bad params, missing dataset)."""


class SuiteParams(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seed: int = 1234
    """Fixes sample order, few-shot picks and generation seeds."""
    limit: int | None = None
    """Score only the first ``limit`` samples (after the seeded shuffle, if any)."""


@dataclass
class SuiteResult:
    metrics: dict[str, dict]
    samples: list[dict]


@dataclass
class RunContext:
    model: str
    """The concrete model name every request goes to (a version id, never a moving alias)."""
    client: ModelClient
    data_dirs: list[Path]
    concurrency: int = 4
    settings: object = None
    on_progress: Callable[[int, int], Awaitable[None]] | None = None
    _done: int = field(default=0, init=False)
    _total: int = field(default=0, init=False)

    async def start(self, total: int) -> None:
        self._total = total
        if self.on_progress:
            await self.on_progress(0, total)

    async def advance(self, n: int = 1) -> None:
        self._done += n
        if self.on_progress:
            await self.on_progress(self._done, self._total)

    async def map(self, fn: Callable, items: Iterable) -> list:
        """``fn`` over ``items`` with at most ``concurrency`` in flight; results in input order."""
        sem = asyncio.Semaphore(max(1, self.concurrency))

        async def one(item):
            async with sem:
                out = await fn(item)
            await self.advance()
            return out

        return list(await asyncio.gather(*(one(i) for i in items)))


def resolve_dataset(name: str, dirs: list[Path]) -> Path:
    """A dataset by file name (or a path) that lies inside one of the allowed folders."""
    candidate = Path(name)
    for d in dirs:
        path = (candidate if candidate.is_absolute() else d / candidate).resolve()
        if path.is_file() and path.is_relative_to(d.resolve()):
            return path
    allowed = ", ".join(str(d) for d in dirs)
    raise SuiteError(f"dataset '{name}' was not found in the eval data folders ({allowed})")


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SuiteError(f"{path.name}:{n} is not valid JSON: {exc.msg}") from None
    if not rows:
        raise SuiteError(f"{path.name} has no samples")
    return rows


class Suite:
    name: ClassVar[str]
    Params: ClassVar[type[SuiteParams]] = SuiteParams

    def __init__(self, params: SuiteParams, data_dirs: list[Path]) -> None:
        self.params = params
        self.data_dirs = data_dirs

    def fingerprint(self) -> str:
        """What makes two runs comparable: the params and the content of the data they read."""
        return hashlib.sha256(json.dumps(self.params.model_dump(), sort_keys=True).encode()).hexdigest()

    async def run(self, ctx: RunContext) -> SuiteResult:  # pragma: no cover - abstract
        raise NotImplementedError
