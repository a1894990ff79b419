"""``llmsvc db upgrade|check``: apply or verify the Alembic migrations."""

from __future__ import annotations

from services.common.db.engine import default_database_url
from services.common.db.migrate import check, upgrade


def add_parser(sub) -> None:
    p = sub.add_parser("db", help="database migrations ($LLMSVC_DATABASE_URL, else the embedded SQLite file)")
    p.add_argument("action", choices=["upgrade", "check"])
    p.add_argument("--url", help="database URL (default: $LLMSVC_DATABASE_URL or ~/.llmsvc/llmsvc.db)")
    p.set_defaults(func=run)


def run(args) -> int:
    url = args.url or default_database_url()
    shown = url.split("@")[-1]  # never print credentials
    if args.action == "upgrade":
        upgrade(url)
        print(f"database at {shown} is at the latest migration")
    else:
        check(url)
        print(f"database at {shown}: models and migrations agree")
    return 0
