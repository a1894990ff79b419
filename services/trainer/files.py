"""Uploaded training files: stored in ``<store>/.files/<id>.jsonl``, described in ``training_files``.

An upload is written to a temporary file, validated line by line, then moved
into place with one rename; only a valid file is kept and recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common.db.job_tables import TrainingFile

from .datafile import InvalidFile, validate_path
from .pagination import newer_than, older_than

PURPOSES = ("fine-tune", "batch")
"""What a client may upload: training data, or the requests of a batch. The service itself writes files of
purpose ``batch_output`` (a batch's output and error files)."""


class UploadTooLarge(ValueError):
    pass


def _mib(n: int) -> str:
    return f"{n / 2**20:g}"


class FileStore:
    def __init__(self, root: Path, sessions: async_sessionmaker[AsyncSession], max_bytes: int,
                 max_batch_bytes: int | None = None) -> None:
        self.root, self.sessions, self.max_bytes = Path(root), sessions, max_bytes
        self.max_batch_bytes = max_bytes if max_batch_bytes is None else max_batch_bytes

    async def save(self, filename: str, purpose: str, owner: str, chunks: AsyncIterator[bytes]) -> TrainingFile:
        """Write, validate and record an upload; raise :class:`InvalidFile` or :class:`UploadTooLarge`."""
        if purpose not in PURPOSES:
            raise InvalidFile(f"purpose must be one of {', '.join(PURPOSES)}; got {purpose!r}")
        file_id = f"file-{secrets.token_hex(12)}"
        self.root.mkdir(parents=True, exist_ok=True)
        tmp, final = self.root / f".{file_id}.part", self.root / f"{file_id}.jsonl"
        digest, size = hashlib.sha256(), 0
        most = self.max_batch_bytes if purpose == "batch" else self.max_bytes
        try:
            with tmp.open("wb") as f:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > most:
                        raise UploadTooLarge(f"the file is larger than {_mib(most)} MiB, the most a "
                                             f"{purpose} file may hold")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            summary = await asyncio.to_thread(validate_path, tmp, purpose)
            tmp.rename(final)
        finally:
            tmp.unlink(missing_ok=True)
        row = TrainingFile(id=file_id, filename=filename or "upload.jsonl", purpose=purpose, bytes=size,
                           path=str(final), sha256=digest.hexdigest(), format=summary.format,
                           examples=summary.examples, status="processed", owner=owner)
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return row

    def write_generated(self, file_id: str, filename: str, owner: str, lines: list[bytes]) -> TrainingFile:
        """Write a file the service made (a batch's output or error file) under a fixed id, replacing what an
        earlier, interrupted attempt left; the caller adds the returned row in its own transaction."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp, final = self.root / f".{file_id}.part", self.root / f"{file_id}.jsonl"
        data = b"".join(lines)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(final)
        return TrainingFile(id=file_id, filename=filename, purpose="batch_output", bytes=len(data), path=str(final),
                            sha256=hashlib.sha256(data).hexdigest(), format="batch_output", examples=len(lines),
                            status="processed", owner=owner)

    async def get(self, file_id: str) -> TrainingFile | None:
        async with self.sessions() as session:
            return await session.get(TrainingFile, file_id)

    async def list(self, purpose: str = "", after: str = "", limit: int = 20,
                   order: str = "desc", owner: str | None = None) -> tuple[list[TrainingFile], bool]:
        """A page of files, of one owner's (None: every owner's)."""
        desc = order != "asc"
        async with self.sessions() as session:
            stmt = select(TrainingFile)
            if owner is not None:
                stmt = stmt.where(TrainingFile.owner == owner)
            if purpose:
                stmt = stmt.where(TrainingFile.purpose == purpose)
            if after and (cursor := await session.get(TrainingFile, after)) is not None:
                cond = older_than if desc else newer_than
                stmt = stmt.where(cond(TrainingFile.created_at, TrainingFile.id, cursor))
            cols = (TrainingFile.created_at.desc(), TrainingFile.id.desc()) if desc else \
                (TrainingFile.created_at, TrainingFile.id)
            rows = list(await session.scalars(stmt.order_by(*cols).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    async def delete(self, file_id: str) -> bool:
        async with self.sessions() as session:
            row = await session.get(TrainingFile, file_id)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
        Path(row.path).unlink(missing_ok=True)
        return True

