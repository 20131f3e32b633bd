"""search_text: the text of _text and _content, with full-text indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "search_text",
        sa.Column(
            "resource_pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False
        ),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(100), nullable=False),
        sa.Column("group_no", sa.Integer, nullable=True),
        sa.Column("content", sa.Text, nullable=False),
    )
    op.create_index("ix_search_text_pk", "search_text", ["resource_pk"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_search_text_tsv ON search_text USING gin (to_tsvector('simple', content))"
        )
        return
    # SQLite: an external-content FTS5 index over search_text, kept in step by triggers.
    op.execute(
        "CREATE VIRTUAL TABLE search_text_fts USING fts5(content, resource_pk UNINDEXED, "
        "param UNINDEXED, content='search_text', content_rowid='rowid')"
    )
    op.execute(
        "CREATE TRIGGER search_text_ai AFTER INSERT ON search_text BEGIN "
        "INSERT INTO search_text_fts(rowid, content, resource_pk, param) "
        "VALUES (new.rowid, new.content, new.resource_pk, new.param); END"
    )
    op.execute(
        "CREATE TRIGGER search_text_ad AFTER DELETE ON search_text BEGIN "
        "INSERT INTO search_text_fts(search_text_fts, rowid, content, resource_pk, param) "
        "VALUES ('delete', old.rowid, old.content, old.resource_pk, old.param); END"
    )


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        op.execute("DROP TRIGGER IF EXISTS search_text_ai")
        op.execute("DROP TRIGGER IF EXISTS search_text_ad")
        op.execute("DROP TABLE IF EXISTS search_text_fts")
    op.drop_table("search_text")
