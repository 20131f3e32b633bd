"""bulk_input: the ndjson inputs of `$import` jobs (URLs, or an uploaded body) and what each did

An uploaded body is stored so that any worker process can run the job.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulk_input",
        sa.Column(
            "job_id",
            sa.String(64),
            sa.ForeignKey("bulk_job.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=True),
        sa.Column("url", sa.Text, nullable=True),
        sa.Column("content", sa.LargeBinary, nullable=True),
        sa.Column("read", sa.Integer, nullable=True),
        sa.Column("created", sa.Integer, nullable=True),
        sa.Column("existing", sa.Integer, nullable=True),
        sa.Column("rejected", sa.Integer, nullable=True),
        sa.Column("failure", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("bulk_input")
