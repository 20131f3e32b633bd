"""ix_search_date_pk covers the date values: per-resource date checks are index-only

A search that walks one criterion's index probes the others per resource;
date criteria were the ones still reading table rows for that (one heap
fetch per probe, docs/PERFORMANCE.md "Search at scale").

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_search_date_pk", table_name="search_date")
    op.create_index(
        "ix_search_date_pk", "search_date", ["resource_pk", "resource_type", "param", "low", "high"]
    )


def downgrade() -> None:
    op.drop_index("ix_search_date_pk", table_name="search_date")
    op.create_index("ix_search_date_pk", "search_date", ["resource_pk"])
