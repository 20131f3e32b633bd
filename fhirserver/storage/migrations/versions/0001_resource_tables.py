"""resource and resource_history tables

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from fhirserver.storage.tables import JsonDocument, UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", UtcDateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("body", JsonDocument, nullable=True),
    )
    op.create_index("ux_resource_type_id", "resource", ["resource_type", "id"], unique=True)
    op.create_index("ix_resource_type_updated", "resource", ["resource_type", "last_updated"])
    op.create_index("ix_resource_patient", "resource", ["patient_id"])
    op.create_table(
        "resource_history",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", UtcDateTime, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("body", JsonDocument, nullable=True),
    )
    op.create_index(
        "ux_history_version", "resource_history", ["resource_type", "id", "version_id"], unique=True
    )
    op.create_index("ix_history_type_seq", "resource_history", ["resource_type", "seq"])
    op.create_index("ix_history_updated", "resource_history", ["last_updated"])


def downgrade() -> None:
    op.drop_table("resource_history")
    op.drop_table("resource")
