"""eval: runs, results and samples

Revision ID: 0004_evals
Revises: 0003_jobs
Create Date: 2026-11-28
"""

revision = "0004_evals"
down_revision = "0003_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
