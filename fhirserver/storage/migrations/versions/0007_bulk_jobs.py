"""bulk_job and bulk_output: asynchronous bulk data jobs and their files, in the database

Any server process may claim a job and any may serve its status and files
(http://hl7.org/fhir/uv/bulkdata/export.html), so both live here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from fhirserver.storage.tables import JsonDocument, UtcDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_job",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_url", sa.Text, nullable=False),
        sa.Column("parameters", JsonDocument, nullable=False),
        sa.Column("progress", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=True),
        sa.Column("heartbeat_at", UtcDateTime, nullable=True),
        sa.Column("finished_at", UtcDateTime, nullable=True),
        sa.Column("transaction_time", UtcDateTime, nullable=True),
    )
    op.create_index("ix_bulk_job_queue", "bulk_job", ["status", "created_at"])
    op.create_table(
        "bulk_output",
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("bulk_job.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bulk_output")
    op.drop_index("ix_bulk_job_queue", table_name="bulk_job")
    op.drop_table("bulk_job")
