"""Rebuild the search index tables from the stored resources (``fhirserver reindex``).

Needed when SearchParameter definitions change (conformance/custom/*.json) or
the extraction code does. Works in batches of resources, one transaction per
batch, walking the primary key (no OFFSET), so it can run beside a live server.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import false, select

from fhirserver.resources import jsonio
from fhirserver.search import extract
from fhirserver.storage import index_writer
from fhirserver.storage.session import Database
from fhirserver.storage.tables import resource

BATCH = 500


def reindex(
    database: Database,
    *,
    resource_type: str | None = None,
    base_url: str = "",
    progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Recompute the index rows of every current resource (of one type, if given). Returns the count."""
    last_pk, done = 0, 0
    while True:
        with database.transaction(write=True) as conn:
            stmt = (
                select(resource.c.pk, resource.c.body)
                .where(resource.c.pk > last_pk, resource.c.deleted == false())
                .order_by(resource.c.pk)
                .limit(BATCH)
            )
            if resource_type is not None:
                stmt = stmt.where(resource.c.resource_type == resource_type)
            rows = list(conn.execute(stmt))
            if not rows:
                return done
            pks = [row.pk for row in rows]
            index_writer.delete_rows(conn, pks)
            batches: dict[str, list[dict]] = {}
            for row in rows:
                for search_type, index_rows in extract.index_rows(
                    jsonio.loads(row.body), base_url=base_url
                ).items():
                    for index_row in index_rows:
                        index_row["resource_pk"] = row.pk
                    batches.setdefault(search_type, []).extend(index_rows)
            index_writer.insert_rows(conn, batches)
            last_pk = pks[-1]
            done += len(rows)
            progress(done)
