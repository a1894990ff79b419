"""``llmsvc models list|show`` (and ``promote|rollback`` from lifecycle.py): the model registry.

``list`` and ``show`` read the registry in the database (``--url``, else
``$LLMSVC_DATABASE_URL``, else the embedded SQLite file), like ``llmsvc db``.
"""

from __future__ import annotations

import asyncio
import json

from rich.table import Table
from sqlalchemy import select

from services.common.db import registry
from services.common.db.engine import default_database_url, make_engine, session_factory

from .eval import console


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="registered model versions and their aliases")
    models_sub = p.add_subparsers(dest="models_command", required=True)
    ls = models_sub.add_parser("list", help="every version (or those of one name), with its aliases")
    ls.add_argument("--name", help="only versions of this name")
    sh = models_sub.add_parser("show", help="one version: an id (name-vN), an alias, or a name (its latest)")
    sh.add_argument("model")
    for action, func in ((ls, cmd_list), (sh, cmd_show)):
        action.add_argument("--url", help="database URL (default: $LLMSVC_DATABASE_URL or ~/.llmsvc/llmsvc.db)")
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(func=func)
    from . import lifecycle

    lifecycle.add_subcommands(models_sub)


async def _query(url: str, fn):
    engine = make_engine(url)
    try:
        async with session_factory(engine)() as session:
            return await fn(session)
    finally:
        await engine.dispose()


async def _aliases(session) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in await session.scalars(select(registry.ModelAlias).order_by(registry.ModelAlias.alias)):
        out.setdefault(a.version_id, []).append(a.alias)
    return out


def version_doc(v: registry.ModelVersion, aliases: list[str]) -> dict:
    return {"id": v.id, "name": v.name, "version": v.version, "path": v.path, "parent": v.parent,
            "recipe": v.recipe, "data_hash": v.data_hash, "metrics": v.metrics, "config": v.config,
            "job_id": v.job_id, "created_at": v.created_at.isoformat(), "aliases": aliases}


def cmd_list(args) -> int:
    async def fetch(session):
        return await registry.list_versions(session, args.name), await _aliases(session)

    versions, aliases = asyncio.run(_query(args.url or default_database_url(), fetch))
    if args.json:
        print(json.dumps([version_doc(v, aliases.get(v.id, [])) for v in versions], indent=2))
        return 0
    table = Table("id", "recipe", "parent", "final_loss", "aliases", "created", "path")
    for v in versions:
        loss = v.metrics.get("final_loss")
        table.add_row(v.id, v.recipe, v.parent or "", f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
                      ", ".join(aliases.get(v.id, [])), v.created_at.strftime("%Y-%m-%d %H:%M"), v.path)
    console.print(table)
    return 0


async def _evals(session, version_id: str) -> dict:
    """The latest successful eval of each suite on this version: {suite: {metric: value, ..., "run": id}}."""
    from sqlalchemy import select

    from services.common.db.eval_tables import EvalRun

    rows = await session.scalars(select(EvalRun).where(EvalRun.model_version == version_id,
                                                          EvalRun.status == "succeeded")
                                 .order_by(EvalRun.created_at))
    out: dict = {}
    for r in rows:  # oldest first: the latest of a suite wins
        out[r.suite] = {**{k: m["value"] for k, m in (r.metrics or {}).items()}, "run": r.id}
    return out


def cmd_show(args) -> int:
    async def fetch(session):
        version = await registry.resolve(session, args.model)
        return version, await _aliases(session), await _evals(session, version.id) if version else {}

    version, aliases, evals = asyncio.run(_query(args.url or default_database_url(), fetch))
    if version is None:
        console.print(f"[red]no model version, alias or name {args.model!r}[/]")
        return 1
    doc = {**version_doc(version, aliases.get(version.id, [])), "evals": evals}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    for key, value in doc.items():
        shown = json.dumps(value) if isinstance(value, (dict, list)) else value
        console.print(f"[bold]{key:>10}[/]  {shown}", highlight=False)
    return 0
