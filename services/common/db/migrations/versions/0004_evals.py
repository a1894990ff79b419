"""eval: runs, results and samples

Revision ID: 0004_evals
Revises: 0003_jobs
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision = "0004_evals"
down_revision = "0003_jobs"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.String(length=200), nullable=False),
        sa.Column("suite", sa.String(length=64), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("metrics", JSON, nullable=False),
        sa.Column("sample_count", sa.Integer(), nullable=False),
        sa.Column("samples_done", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_runs_model"), ["model"], unique=False)
        batch_op.create_index("ix_eval_runs_version_suite", ["model_version", "suite", "params_hash"], unique=False)

    op.create_table(
        "eval_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("record", JSON, nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"], name=op.f("fk_eval_samples_run_id_eval_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_samples")),
        sa.UniqueConstraint("run_id", "idx", name=op.f("uq_eval_samples_run_id")),
    )
    with op.batch_alter_table("eval_samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_eval_samples_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("eval_samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_eval_samples_run_id"))
    op.drop_table("eval_samples")
    with op.batch_alter_table("eval_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_eval_runs_version_suite")
        batch_op.drop_index(batch_op.f("ix_eval_runs_model"))
    op.drop_table("eval_runs")
