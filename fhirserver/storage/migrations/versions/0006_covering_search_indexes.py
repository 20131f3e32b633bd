"""Search indexes end with resource_pk: criteria answered from the index alone

Without it every matching index entry cost a heap fetch for its resource_pk;
at 1M Observations a code criterion read ~25,000 table pages (docs/PERFORMANCE.md).
ix_resource_live (type, pk, id) of the live resources lets a search page walk
a narrow index instead of the wide resource rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: index -> (table, columns before resource_pk, PostgreSQL operator classes)
_INDEXES = {
    "ix_search_string": (
        "search_string",
        ["resource_type", "param", "normalized"],
        {"normalized": "varchar_pattern_ops"},
    ),
    "ix_search_token": ("search_token", ["resource_type", "param", "code", "system"], {}),
    "ix_search_date": ("search_date", ["resource_type", "param", "low", "high"], {}),
    "ix_search_date_high": ("search_date", ["resource_type", "param", "high"], {}),
    "ix_search_number": ("search_number", ["resource_type", "param", "value"], {}),
    "ix_search_quantity": (
        "search_quantity",
        ["resource_type", "param", "canonical_code", "canonical_value"],
        {},
    ),
    "ix_search_reference": (
        "search_reference",
        ["resource_type", "param", "target_type", "target_id"],
        {},
    ),
    "ix_search_uri": ("search_uri", ["resource_type", "param", "value"], {}),
}


def _recreate(with_pk: bool) -> None:
    for name, (table, columns, ops) in _INDEXES.items():
        op.drop_index(name, table_name=table)
        op.create_index(
            name, table, columns + (["resource_pk"] if with_pk else []), postgresql_ops=ops
        )


def upgrade() -> None:
    _recreate(with_pk=True)
    live = sa.text("deleted = false")
    op.create_index(
        "ix_resource_live",
        "resource",
        ["resource_type", "pk", "id"],
        postgresql_where=live,
        sqlite_where=live,
    )


def downgrade() -> None:
    op.drop_index("ix_resource_live", table_name="resource")
    _recreate(with_pk=False)
