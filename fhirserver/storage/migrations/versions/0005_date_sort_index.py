"""search_date (resource_type, param, high): descending date sorts read it in order

A search sorted by ``-date`` pages through the latest end of each resource's
dates; with this index the database walks it backwards and stops after a page.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_search_date_high", "search_date", ["resource_type", "param", "high"])


def downgrade() -> None:
    op.drop_index("ix_search_date_high", table_name="search_date")
