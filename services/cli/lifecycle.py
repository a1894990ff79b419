"""``llmsvc models promote|rollback``: move an alias through the gateway (gated, audited).

``add_subcommands`` adds both to the ``llmsvc models`` sub-parsers, next to
``list`` and ``show``.
"""

from __future__ import annotations

from rich.table import Table

from .eval import add_client_args, check, client, console


def add_subcommands(models_sub) -> None:
    p = models_sub.add_parser("promote", help="point an alias at a version if it passes the eval gate")
    p.add_argument("alias", help="e.g. tiny-chat")
    p.add_argument("version", help="a registered version id, e.g. tiny-chat-v7")
    p.add_argument("--force", action="store_true", help="promote past a failed gate (admin scope; audited)")
    add_client_args(p)
    p.set_defaults(func=cmd_promote)
    r = models_sub.add_parser("rollback", help="point an alias back at its previous version")
    r.add_argument("alias")
    add_client_args(r)
    r.set_defaults(func=cmd_rollback)


def print_outcome(doc: dict) -> None:
    table = Table("suite", "metric", "candidate", "current", "threshold", "tolerance", "verdict")
    for c in doc.get("checks", []):
        table.add_row(c["suite"], c["metric"], _num(c["candidate"]), _num(c["current"]), _num(c["threshold"]),
                      f"{c['tolerance']:.1%}", "[green]pass[/]" if c["passed"] else f"[red]fail[/]: {c['reason']}")
    if doc.get("checks"):
        console.print(table)
    console.print(doc["message"])


def _num(v) -> str:
    return "—" if v is None else f"{v:.4g}"


def cmd_promote(args) -> int:
    with client(args) as c:
        resp = c.post(f"/v1/models/{args.alias}/promote", json={"version": args.version, "force": args.force})
    if resp.status_code == 409 and "promotion" in resp.json():
        print_outcome(resp.json()["promotion"])
        console.print("[red]refused.[/] Pass --force (admin) to promote anyway; it is audited.")
        return 1
    print_outcome(check(resp))
    return 0


def cmd_rollback(args) -> int:
    with client(args) as c:
        print_outcome(check(c.post(f"/v1/models/{args.alias}/rollback")))
    return 0
