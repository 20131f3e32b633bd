"""Writing many new resources in a few statements: the path of bulk loading
(``fhirserver load``, ``$import``) and of the benchmarks' data generators.

It writes exactly the rows :meth:`SqlRepository.create` writes — the current
version, its history row and its search index rows — but per batch instead of
per resource: one INSERT for the resource rows, one for their history, one per
index table. A resource whose type and id already exist is left as it is, so
loading the same files twice changes nothing (the uniqueness constraint on
(type, id) decides, not a lookup). Callers validate before they hand resources in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fhirserver.resources import jsonio, meta
from fhirserver.search import extract
from fhirserver.storage import index_writer
from fhirserver.storage.tables import resource, resource_history, utcnow


@dataclass(frozen=True)
class BulkResult:
    #: (type, id) of each resource written, in input order.
    created: list[tuple[str, str]]
    #: (type, id) of each resource that already existed and was left unchanged.
    existing: list[tuple[str, str]]


def insert_new(
    conn: Connection, resources: Sequence[dict], *, base_url: str = "", method: str = "POST"
) -> BulkResult:
    """Insert version 1 of each resource under its ``id`` (a new id when it has none)."""
    if not resources:
        return BulkResult([], [])
    now = utcnow()
    # Milliseconds: what meta.lastUpdated and the If-Modified-Since arithmetic carry.
    last_updated = now.replace(microsecond=now.microsecond // 1000 * 1000)
    rows, by_key = [], {}
    for item in resources:
        resource_type = item["resourceType"]
        resource_id = item.get("id") or meta.new_id()
        key = (resource_type, resource_id)
        if key in by_key:
            continue  # the same resource twice in one batch: the first one wins
        stamped = meta.stamp(item, resource_id=resource_id, version_id=1, last_updated=last_updated)
        body = jsonio.dumps(stamped)
        # The stored version is indexed (its id and meta.lastUpdated included).
        by_key[key] = (stamped, body)
        rows.append(
            {
                "resource_type": resource_type,
                "id": resource_id,
                "version_id": 1,
                "last_updated": last_updated,
                "deleted": False,
                "patient_id": resource_id if resource_type == "Patient" else None,
                "body": body,
            }
        )
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = (
        dialect_insert(resource)
        .on_conflict_do_nothing(index_elements=[resource.c.resource_type, resource.c.id])
        .returning(resource.c.pk, resource.c.resource_type, resource.c.id)
    )
    written = {(row.resource_type, row.id): row.pk for row in conn.execute(stmt, rows)}
    created = [key for key in by_key if key in written]
    if not created:
        return BulkResult([], list(by_key))

    conn.execute(
        insert(resource_history),
        [
            {
                "resource_type": t,
                "id": i,
                "version_id": 1,
                "last_updated": last_updated,
                "deleted": False,
                "method": method,
                "body": by_key[(t, i)][1],
            }
            for t, i in created
        ],
    )
    index: dict[str, list[dict]] = {}
    for key in created:
        pk = written[key]
        for search_type, index_rows in extract.index_rows(
            by_key[key][0], base_url=base_url
        ).items():
            for row in index_rows:
                row["resource_pk"] = pk
            index.setdefault(search_type, []).extend(index_rows)
    index_writer.insert_rows(conn, index)
    return BulkResult(created, [key for key in by_key if key not in written])
