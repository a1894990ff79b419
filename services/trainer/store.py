"""The local model store: where bases are found, and how a finished job's output becomes a version.

Layout: ``<store>/<name>/<version>/`` holds one Hugging Face directory per
registered version. A job trains into ``<store>/.jobs/<job>/output`` and the
result is moved into place with one ``rename`` only after it is checked to be
complete, then registered; nothing half-written is ever registered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from services.common.db import registry

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_publish_lock = asyncio.Lock()


@dataclass(frozen=True)
class BaseModel:
    """What a job's ``model`` resolved to."""

    spec: dict
    """The trainer SPEC's ``model``: ``{"base": path}`` or ``{"preset": name}``."""
    name: str
    """Registry name of the base (default name of the result)."""
    parent: str | None
    """Version id or path the result descends from."""


def _safetensors_ok(path: Path) -> bool:
    """The header parses and the file is as long as the header says: catches truncated writes."""
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + n + end
    except (OSError, ValueError, KeyError, struct.error):
        return False


def _weights_problems(path: Path) -> list[str]:
    if (index := path / "model.safetensors.index.json").exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError):
            return ["model.safetensors.index.json is not valid"]
        return [f"{s} is missing or truncated" for s in sorted(shards) if not _safetensors_ok(path / s)]
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (path / name).exists():
            return [] if _safetensors_ok(path / name) else [f"{name} is truncated"]
    if (path / "pytorch_model.bin").exists() or (path / "adapter_model.bin").exists():
        return []
    return ["no weights (model.safetensors or adapter_model.safetensors)"]


def completeness_problems(path: Path) -> list[str]:
    """Why ``path`` is not a loadable Hugging Face model or adapter directory; empty when it is."""
    if not path.is_dir():
        return [f"{path} is not a directory"]
    problems = []
    config = "adapter_config.json" if (path / "adapter_config.json").exists() else "config.json"
    try:
        json.loads((path / config).read_text())
    except (OSError, ValueError):
        problems.append(f"{config} is missing or not valid JSON")
    problems += _weights_problems(path)
    if not ((path / "tokenizer.json").exists() or (path / "tokenizer.model").exists()):
        problems.append("no tokenizer (tokenizer.json)")
    return problems


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / ".jobs" / job_id

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def find_dir(self, model: str) -> Path | None:
        """A model folder in the store by name: ``<store>/<model>`` itself or its highest version."""
        if not NAME_RE.match(model):
            return None
        path = self.root / model
        if (path / "config.json").exists():
            return path
        versions = sorted((int(p.name) for p in path.glob("*") if p.name.isdigit()), reverse=True)
        for v in versions:
            if (path / str(v) / "config.json").exists():
                return path / str(v)
        return None

    async def resolve_base(self, session: AsyncSession, model: str) -> BaseModel | None:
        """A trainer preset (``preset:<name>``), a registered version or alias, or a folder in the store."""
        if model.startswith("preset:"):
            preset = model.split(":", 1)[1]
            # The name becomes the result's default registry name and store folder: same rules as a suffix.
            return BaseModel({"preset": preset}, preset, None) if NAME_RE.match(preset) else None
        row = await registry.resolve(session, model)
        if row is not None:
            return BaseModel({"base": row.path}, row.name, row.id)
        path = self.find_dir(model)
        if path is not None:
            return BaseModel({"base": str(path)}, model, str(path))
        return None

    async def usable_by(self, session: AsyncSession, base: BaseModel, owner: str) -> bool:
        """Whether a key of ``owner`` may train from ``base``: a registered version must be shared or its
        owner's; a folder of the store counts as the version registered there, if any (else shared)."""
        row = await registry.get_version(session, base.parent) if base.parent else None
        if row is None and base.spec.get("base"):
            where = os.path.realpath(base.spec["base"])
            row = next((v for v in await registry.list_versions(session)
                        if os.path.realpath(v.path) == where), None)
        return row is None or registry.visible(row.owner, owner)

    def _clear_slot(self, target: Path) -> None:
        # A folder at an unregistered number is a leftover of a crash between rename and register:
        # set it aside (never delete what we did not register) so the number can be used.
        if target.exists():
            aside = self.root / ".trash" / f"{target.parent.name}-{target.name}-{int(time.time())}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            log.warning("moving unregistered %s aside to %s", target, aside)
            target.rename(aside)

    async def _recover_staging(self, session: AsyncSession, name: str, staging: Path, job_id: str) -> None:
        """A crash between moving a job's output to its slot and registering it left an unregistered folder
        that names the job: move it back, so publishing can run again."""
        registered = {os.path.realpath(v.path) for v in await registry.list_versions(session, name)}
        for slot in sorted(self.root.joinpath(name).glob("*")) if self.root.joinpath(name).is_dir() else []:
            marker = slot / PUBLISH_MARKER
            if (os.path.realpath(slot) not in registered and marker.is_file()
                    and marker.read_text().strip() == job_id):
                log.warning("moving %s back to %s: its registration never happened", slot, staging)
                slot.rename(staging)
                return

    async def publish(self, session: AsyncSession, name: str, staging: Path, **meta) -> registry.ModelVersion:
        """Move a complete ``staging`` folder to its version slot and register it; commits.

        The folder and its registry row never end up apart: if registering fails (a database error), the
        folder goes back to ``staging`` and the call raises, so a retry publishes it again; if the process
        dies in between, the next try finds the folder by the job id written in it and moves it back."""
        job_id = str(meta.get("job_id") or "")
        async with _publish_lock:
            if job_id and not staging.exists():
                await self._recover_staging(session, name, staging, job_id)
        if problems := completeness_problems(staging):
            raise IncompleteModel("; ".join(problems))
        if (adapter := adapter_summary(staging)) is not None:  # the router serves it on its base's workers
            meta["config"] = {**(meta.get("config") or {}), "lora_adapter": adapter}
        async with _publish_lock:
            current = await registry.list_versions(session, name)
            version = (current[-1].version if current else 0) + 1
            target = self.version_dir(name, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            self._clear_slot(target)
            if job_id:
                (staging / PUBLISH_MARKER).write_text(job_id)
            staging.rename(target)
            try:
                row = await registry.register_version(session, name, str(target), **meta)
            except BaseException:
                await session.rollback()
                if target.exists() and not staging.exists():
                    target.rename(staging)  # back where the next try looks
                raise
            if row.version != version:  # another process registered this name meanwhile
                final = self.version_dir(name, row.version)
                self._clear_slot(final)
                target.rename(final)
                row.path = str(final)
                await session.commit()
            return row


PUBLISH_MARKER = ".llmsvc-job"
"""Written into a job's output as it is published: which job's model a folder is."""


def adapter_summary(path: Path) -> dict | None:
    """Rank and target modules of a PEFT LoRA adapter folder; None for a full model."""
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return {"r": cfg.get("r"), "target_modules": cfg.get("target_modules"),
            "base_model_name_or_path": cfg.get("base_model_name_or_path")}


class IncompleteModel(RuntimeError):
    """The job's output is not a complete Hugging Face directory."""


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
