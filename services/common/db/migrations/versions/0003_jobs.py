"""trainer: fine-tuning jobs and their events

Revision ID: 0003_jobs
Revises: 0002_registry
Create Date: 2026-11-28
"""

revision = "0003_jobs"
down_revision = "0002_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
