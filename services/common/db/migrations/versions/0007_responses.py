"""stored responses: the Responses API's state (store: true), owned by the key's owner

Revision ID: 0007_responses
Revises: 0006_model_owner
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_responses"
down_revision = "0006_model_owner"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("previous_response_id", sa.String(length=64), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("input_items", sa.Text(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_responses")),
    )
    op.create_index(op.f("ix_stored_responses_owner"), "stored_responses", ["owner"], unique=False)
    op.create_index(op.f("ix_stored_responses_created_at"), "stored_responses", ["created_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_stored_responses_created_at"), table_name="stored_responses")
    op.drop_index(op.f("ix_stored_responses_owner"), table_name="stored_responses")
    op.drop_table("stored_responses")
