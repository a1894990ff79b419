"""registry ownership: model versions and aliases belong to the owner of the job that made them

Versions a fine-tuning job published get that job's owner; the rest (base models the operator added) stay
shared (empty owner). An alias belongs to the owner of the version it points at.

Revision ID: 0006_model_owner
Revises: 0005_ownership
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_model_owner"
down_revision = "0005_ownership"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=False, server_default=""))
        batch.create_index(batch.f("ix_model_versions_owner"), ["owner"], unique=False)
    with op.batch_alter_table("model_aliases") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=200), nullable=False, server_default=""))
    bind = op.get_bind()
    if sa.inspect(bind).has_table("jobs"):
        op.execute("UPDATE model_versions SET owner = (SELECT j.owner FROM jobs j WHERE j.id = model_versions.job_id)"
                   " WHERE job_id IS NOT NULL AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = model_versions.job_id)")
    op.execute("UPDATE model_aliases SET owner = (SELECT v.owner FROM model_versions v "
               "WHERE v.id = model_aliases.version_id) WHERE EXISTS (SELECT 1 FROM model_versions v "
               "WHERE v.id = model_aliases.version_id)")


def downgrade() -> None:
    with op.batch_alter_table("model_aliases") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_index(batch.f("ix_model_versions_owner"))
        batch.drop_column("owner")
