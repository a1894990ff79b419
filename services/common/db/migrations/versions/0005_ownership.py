"""ownership: files, jobs and eval runs belong to the key's owner (team)

Owners were stored as the key id; a key with an owner (team) now stores that, so keys of one owner share.
Rows made by such a key are moved to its owner, and eval runs get an owner column.

Revision ID: 0005_ownership
Revises: 0004_evals
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_ownership"
down_revision = "0004_evals"
branch_labels = None
depends_on = None

_TEAM_OF = ("(SELECT k.owner FROM api_keys k WHERE k.id = {table}.{col} AND k.owner <> '')")


def upgrade() -> None:
    for table in ("training_files", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.alter_column("owner", existing_type=sa.String(length=64), type_=sa.String(length=200),
                               existing_nullable=False)
            batch.create_index(batch.f(f"ix_{table}_owner"), ["owner"], unique=False)
    with op.batch_alter_table("eval_runs") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=False, server_default=""))
        batch.create_index(batch.f("ix_eval_runs_owner"), ["owner"], unique=False)
    bind = op.get_bind()
    if sa.inspect(bind).has_table("api_keys"):
        for table, col in (("training_files", "owner"), ("jobs", "owner"), ("eval_runs", "created_by")):
            team = _TEAM_OF.format(table=table, col=col)
            op.execute(f"UPDATE {table} SET owner = {team} WHERE {team} IS NOT NULL")
        op.execute("UPDATE eval_runs SET owner = created_by WHERE owner = ''")


def downgrade() -> None:
    with op.batch_alter_table("eval_runs") as batch:
        batch.drop_index(batch.f("ix_eval_runs_owner"))
        batch.drop_column("owner")
    for table in ("jobs", "training_files"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(batch.f(f"ix_{table}_owner"))
            batch.alter_column("owner", existing_type=sa.String(length=200), type_=sa.String(length=64),
                               existing_nullable=False)
