"""batches and their lines: the Batch API's state, owned by the key's owner

Revision ID: 0008_batches
Revises: 0007_responses
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_batches"
down_revision = "0007_responses"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("endpoint", sa.String(length=64), nullable=False),
        sa.Column("input_file_id", sa.String(length=64), nullable=False),
        sa.Column("completion_window", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("output_file_id", sa.String(length=64), nullable=False),
        sa.Column("error_file_id", sa.String(length=64), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("in_progress_at", when, nullable=True),
        sa.Column("finalizing_at", when, nullable=True),
        sa.Column("completed_at", when, nullable=True),
        sa.Column("failed_at", when, nullable=True),
        sa.Column("expired_at", when, nullable=True),
        sa.Column("cancelling_at", when, nullable=True),
        sa.Column("cancelled_at", when, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index(op.f("ix_batches_owner"), "batches", ["owner"], unique=False)
    op.create_index(op.f("ix_batches_status"), "batches", ["status"], unique=False)
    op.create_index(op.f("ix_batches_created_at"), "batches", ["created_at"], unique=False)
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(length=64), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(length=512), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("finished_at", when, nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], name=op.f("fk_batch_lines_batch_id_batches"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "line", name=op.f("pk_batch_lines")),
    )
    op.create_index(op.f("ix_batch_lines_done"), "batch_lines", ["done"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_batch_lines_done"), table_name="batch_lines")
    op.drop_table("batch_lines")
    op.drop_index(op.f("ix_batches_created_at"), table_name="batches")
    op.drop_index(op.f("ix_batches_status"), table_name="batches")
    op.drop_index(op.f("ix_batches_owner"), table_name="batches")
    op.drop_table("batches")
