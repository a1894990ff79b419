"""``llmsvc keys create|list|revoke|usage``: API keys through the gateway's admin API.

The CLI talks to ``/v1/admin/keys`` with an admin key rather than to the
database: the same path checks the ``admin`` scope, writes the audit trail and
tells every auth replica about a revocation at once. A direct database write
would do none of that (replicas would notice a revocation only when their
cache entry expires) and would need database credentials on the operator's
machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:  # piped: don't squeeze the table into 80 columns
    console = Console(width=200)


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="create, list, revoke API keys and show their usage (needs an admin key)")
    p.add_argument("--url", default=os.environ.get("LLMSVC_URL", "http://127.0.0.1:8000/v1"),
                   help="API base URL (default $LLMSVC_URL or http://127.0.0.1:8000/v1)")
    p.add_argument("--api-key", help="admin key (default $LLMSVC_API_KEY, else the key `llmsvc up` keeps in its home)")
    p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")
    actions = p.add_subparsers(dest="action", required=True)

    c = actions.add_parser("create", help="create a key; its secret is printed once")
    c.add_argument("--name", required=True)
    c.add_argument("--owner", default="", help="owner or team")
    c.add_argument("--scope", action="append", choices=["chat", "train", "eval", "admin", "batch"],
                   help="repeatable (default: chat)")
    c.add_argument("--model", action="append", help="allowed model, repeatable (default: every model)")
    c.add_argument("--rpm", type=int, help="requests per minute")
    c.add_argument("--tpm", type=int, help="tokens (prompt + completion) per minute")
    c.add_argument("--daily-tokens", type=int, help="tokens per UTC day")
    c.add_argument("--max-concurrent", type=int, help="requests in flight at once")
    c.add_argument("--expires-at", help="RFC 3339 time, e.g. 2027-01-31T00:00:00Z")

    ls = actions.add_parser("list", help="list keys")
    ls.add_argument("--owner", default="")
    ls.add_argument("--all", action="store_true", help="include revoked keys")

    r = actions.add_parser("revoke", help="revoke a key (takes effect on every replica within seconds)")
    r.add_argument("key_id")

    u = actions.add_parser("usage", help="usage of a key per day and model")
    u.add_argument("key_id")
    u.add_argument("--days", type=int, default=30)
    p.set_defaults(func=run)


def admin_key(given: str | None) -> str:
    if given:
        return given
    if env := os.environ.get("LLMSVC_API_KEY"):
        return env
    path = Path(os.environ.get("LLMSVC_HOME", Path.home() / ".llmsvc")) / "api_key"
    if path.exists():
        return path.read_text().strip()
    raise SystemExit("no admin key: pass --api-key, set $LLMSVC_API_KEY, or run `llmsvc up` first")


def _request(args, method: str, path: str, **kw) -> dict:
    headers = {"Authorization": f"Bearer {admin_key(args.api_key)}"}
    try:
        resp = httpx.request(method, args.url.rstrip("/") + path, headers=headers, timeout=30.0, **kw)
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach {args.url}: {exc}") from None
    doc = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    if resp.status_code >= 400:
        message = (doc.get("error") or {}).get("message") or resp.text
        raise SystemExit(f"error {resp.status_code}: {message}")
    return doc


def _create_body(args) -> dict:
    body = {"name": args.name, "owner": args.owner, "scopes": args.scope or ["chat"],
            "allowed_models": args.model or []}
    for field, value in (("rpm", args.rpm), ("tpm", args.tpm), ("daily_token_quota", args.daily_tokens),
                         ("max_concurrent", args.max_concurrent), ("expires_at", args.expires_at)):
        if value is not None:
            body[field] = value
    return body


def _status(k: dict) -> str:
    if k["revoked_at"]:
        return "revoked " + k["revoked_at"][:10]
    return "expires " + k["expires_at"][:10] if k["expires_at"] else "active"


def _keys_table(keys: list[dict]) -> Table:
    t = Table("id", "prefix", "name", "owner", "scopes", "models", "rpm/tpm", "daily/conc", "status", "last used")
    for k in keys:
        t.add_row(k["id"], k["prefix"] + "…", k["name"], k["owner"], ",".join(k["scopes"]),
                  ",".join(k["allowed_models"]) or "*", f"{k['rpm']}/{k['tpm']}",
                  f"{k['daily_token_quota'] or '-'}/{k['max_concurrent'] or '-'}", _status(k),
                  (k["last_used_at"] or "-")[:19])
    return t


def _usage_table(doc: dict) -> Table:
    t = Table("day", "model", "requests", "prompt", "completion", "total", title=f"usage of {doc['key_id']}")
    for b in doc["data"]:
        t.add_row(b["day"], b["model"], str(b["requests"]), str(b["prompt_tokens"]), str(b["completion_tokens"]),
                  str(b["total_tokens"]))
    tot = doc["total"]
    t.add_row("total", "", str(tot["requests"]), str(tot["prompt_tokens"]), str(tot["completion_tokens"]),
              str(tot["total_tokens"]), style="bold")
    return t


def run(args) -> int:
    if args.action == "create":
        doc = _request(args, "POST", "/admin/keys", json=_create_body(args))
    elif args.action == "list":
        doc = _request(args, "GET", "/admin/keys", params={"owner": args.owner, "include_revoked": args.all})
    elif args.action == "revoke":
        doc = _request(args, "DELETE", f"/admin/keys/{quote(args.key_id, safe='')}")
    else:
        doc = _request(args, "GET", f"/admin/keys/{quote(args.key_id, safe='')}/usage",
                       params={"days": args.days})
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.action == "create":
        console.print(_keys_table([doc]))
        console.print(f"\n[bold]key[/]  {doc['key']}\nStore it now: it is shown only this once.")
    elif args.action == "list":
        console.print(_keys_table(doc["data"]))
    elif args.action == "revoke":
        console.print(f"revoked {doc['id']} ({doc['prefix']}…) at {doc['revoked_at']}")
    else:
        console.print(_usage_table(doc))
    return 0
