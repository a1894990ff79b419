"""auth: API keys and usage records

Revision ID: 0001_auth
Revises:
Create Date: 2026-11-28
"""

revision = "0001_auth"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
