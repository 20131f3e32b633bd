"""search index tables, one per SearchParameter type

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from fhirserver.storage.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_PK = sa.BigInteger().with_variant(sa.Integer, "sqlite")

_TABLES = {
    "search_string": [
        sa.Column("normalized", sa.String(512), nullable=False),
        sa.Column("exact", sa.Text, nullable=False),
    ],
    "search_token": [
        sa.Column("system", sa.Text, nullable=True),
        sa.Column("code", sa.String(512), nullable=True),
        sa.Column("text", sa.String(512), nullable=True),
    ],
    "search_date": [
        sa.Column("low", UtcDateTime, nullable=False),
        sa.Column("high", UtcDateTime, nullable=False),
    ],
    "search_number": [sa.Column("value", sa.Numeric, nullable=False)],
    "search_quantity": [
        sa.Column("value", sa.Numeric, nullable=False),
        sa.Column("system", sa.Text, nullable=True),
        sa.Column("code", sa.String(128), nullable=True),
        sa.Column("unit", sa.String(128), nullable=True),
        sa.Column("canonical_value", sa.Numeric, nullable=True),
        sa.Column("canonical_code", sa.String(128), nullable=True),
    ],
    "search_reference": [
        sa.Column("target_type", sa.String(64), nullable=True),
        sa.Column("target_id", sa.String(64), nullable=True),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("identifier_system", sa.Text, nullable=True),
        sa.Column("identifier_value", sa.String(512), nullable=True),
    ],
    "search_uri": [sa.Column("value", sa.Text, nullable=False)],
}

_INDEXES = [
    ("ix_search_token", "search_token", ["resource_type", "param", "code", "system"]),
    ("ix_search_date", "search_date", ["resource_type", "param", "low", "high"]),
    ("ix_search_number", "search_number", ["resource_type", "param", "value"]),
    (
        "ix_search_quantity",
        "search_quantity",
        ["resource_type", "param", "canonical_code", "canonical_value"],
    ),
    (
        "ix_search_reference",
        "search_reference",
        ["resource_type", "param", "target_type", "target_id"],
    ),
    ("ix_search_reference_target", "search_reference", ["target_type", "target_id"]),
    ("ix_search_uri", "search_uri", ["resource_type", "param", "value"]),
]


def upgrade() -> None:
    for name, columns in _TABLES.items():
        op.create_table(
            name,
            sa.Column("resource_pk", _PK, nullable=False),
            sa.Column("resource_type", sa.String(64), nullable=False),
            sa.Column("param", sa.String(100), nullable=False),
            *columns,
        )
        op.create_index(f"ix_{name}_pk", name, ["resource_pk"])
    for index_name, table, index_columns in _INDEXES:
        op.create_index(index_name, table, index_columns)
    # varchar_pattern_ops: PostgreSQL uses the index for LIKE 'prefix%' (starts-with) only with it.
    op.create_index(
        "ix_search_string",
        "search_string",
        ["resource_type", "param", "normalized"],
        postgresql_ops={"normalized": "varchar_pattern_ops"},
    )


def downgrade() -> None:
    for name in _TABLES:
        op.drop_table(name)
