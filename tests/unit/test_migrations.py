"""The migrations build exactly the schema storage/tables.py declares (both databases)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from fhirserver.storage.session import make_engine
from fhirserver.storage.tables import metadata

#: Created by migration 0004 outside the metadata: SQLite's FTS5 table and its
#: shadow tables, PostgreSQL's GIN index over an expression (to_tsvector).
_FULLTEXT_SHADOWS = "search_text_fts"
_FULLTEXT_INDEX = "ix_search_text_tsv"


def test_migrated_database_matches_the_declared_tables_and_indexes(settings):
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    relevant = [
        d
        for d in differences
        if not (d[0] == "remove_table" and d[1].name.startswith(_FULLTEXT_SHADOWS))
        and not (d[0] == "remove_index" and d[1].name == _FULLTEXT_INDEX)
    ]
    assert relevant == []
