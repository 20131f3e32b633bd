"""The Repository protocol and its SQL implementation.

Handlers (interactions/, operations/) only ever talk to a Repository; the
consent work wraps it in a GuardedRepository. The SQL implementation runs
inside the request's transaction (``Database.transaction``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection, exists, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fhirserver.errors import PreconditionFailed
from fhirserver.resources import jsonio, meta
from fhirserver.search import bundle as search_bundle
from fhirserver.search import everything as search_everything
from fhirserver.search import extract, valuesets
from fhirserver.search import lastn as search_lastn
from fhirserver.search import parse as search_parse
from fhirserver.search import plan as search_plan
from fhirserver.search import selection as search_selection
from fhirserver.search import stats as search_stats
from fhirserver.search.query import SearchQuery
from fhirserver.search.types import SearchContext
from fhirserver.storage import index_writer
from fhirserver.storage.tables import SEARCH_TABLES, resource, resource_history, utcnow


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of a resource as stored. ``body`` is the JSON bytes (None for a tombstone)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    deleted: bool
    body: bytes | None
    method: str = "PUT"
    seq: int = 0


@dataclass(frozen=True, slots=True)
class WriteResult:
    version: StoredVersion
    created: bool


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which versions a history interaction wants (http://hl7.org/fhir/R4/http.html#history)."""

    resource_type: str | None = None
    id: str | None = None
    since: datetime | None = None
    #: ``_at`` as a half-open range [start, end) from its precision.
    at: tuple[datetime, datetime] | None = None
    #: Keyset cursor: only versions with seq < before_seq (newest first).
    before_seq: int | None = None
    count: int = 20


class Repository(Protocol):
    def read(self, resource_type: str, id: str) -> StoredVersion | None: ...

    def vread(self, resource_type: str, id: str, version_id: int) -> StoredVersion | None: ...

    def create(self, resource: dict, *, id: str | None = None) -> StoredVersion: ...

    def update(
        self, resource: dict, id: str, *, if_match: int | None = None, method: str = "PUT"
    ) -> WriteResult: ...

    def delete(
        self, resource_type: str, id: str, *, if_match: int | None = None
    ) -> StoredVersion | None: ...

    def history(self, query: HistoryQuery) -> list[StoredVersion]: ...

    def replace_meta(self, resource_type: str, id: str, meta: dict) -> StoredVersion | None: ...

    def meta_in_use(self, resource_type: str | None) -> dict: ...

    def find(
        self, resource_type: str, params: list[tuple[str, str]], *, limit: int
    ) -> list[str]: ...

    def lock_criteria(self, resource_type: str, params: list[tuple[str, str]]) -> None: ...

    def read_for_update(self, resource_type: str, id: str) -> StoredVersion | None: ...

    def savepoint(self) -> AbstractContextManager: ...

    def search(
        self,
        query: SearchQuery,
        context: SearchContext,
        *,
        base_url: str,
        params: list[tuple[str, str]],
    ) -> dict: ...

    def everything(
        self,
        query: search_everything.EverythingQuery,
        *,
        base_url: str,
        params: list[tuple[str, str]],
    ) -> dict: ...

    def lastn(
        self,
        query: search_lastn.LastnQuery,
        context: SearchContext,
        *,
        base_url: str,
        params: list[tuple[str, str]],
    ) -> dict: ...

    def observation_stats(
        self, query: search_stats.StatsQuery, context: SearchContext
    ) -> search_stats.StatsResult: ...


_MS = timedelta(milliseconds=1)

_READ_SQL = {
    "postgresql": "SELECT version_id, last_updated, deleted, body::text FROM resource"
    " WHERE resource_type = %s AND id = %s",
    "sqlite": "SELECT version_id, last_updated, deleted, body FROM resource WHERE resource_type = ? AND id = ?",
}


def _as_utc(value: datetime | str) -> datetime:
    """A driver's timestamp as an aware UTC datetime (SQLite hands back naive UTC text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _truncate_ms(moment: datetime) -> datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _next_timestamp(previous: datetime | None) -> datetime:
    """Now, truncated to ms (the precision of meta.lastUpdated), and never before the previous version."""
    now = _truncate_ms(utcnow())
    if previous is not None and now <= previous:
        now = previous + _MS
    return now


class SqlRepository:
    """Repository over the ``resource`` and ``resource_history`` tables."""

    def __init__(self, conn: Connection, *, base_url: str = ""):
        self.conn = conn
        self.dialect = conn.dialect.name
        #: This server's base URL: absolute references under it are indexed as local ones.
        self.base_url = base_url

    # -- reads ---------------------------------------------------------------

    def read(self, resource_type: str, id: str) -> StoredVersion | None:
        # The hottest query of the server goes straight to the driver: building,
        # caching and processing a SQLAlchemy statement costs more than the
        # primary-key lookup itself (docs/PERFORMANCE.md).
        driver = self.conn.connection.driver_connection
        assert driver is not None  # a checked-out connection always has one
        cursor = driver.cursor()
        try:
            cursor.execute(_READ_SQL[self.dialect], (resource_type, id))
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None:
            return None
        version_id, last_updated, deleted, body = row
        return StoredVersion(
            resource_type,
            id,
            version_id,
            _as_utc(last_updated),
            bool(deleted),
            None if body is None else body.encode(),
        )

    def vread(self, resource_type: str, id: str, version_id: int) -> StoredVersion | None:
        h = resource_history.c
        row = self.conn.execute(
            select(h.last_updated, h.deleted, h.body, h.method, h.seq).where(
                h.resource_type == resource_type, h.id == id, h.version_id == version_id
            )
        ).first()
        if row is None:
            return None
        return StoredVersion(
            resource_type,
            id,
            version_id,
            row.last_updated,
            row.deleted,
            row.body,
            row.method,
            row.seq,
        )

    def history(self, query: HistoryQuery) -> list[StoredVersion]:
        h = resource_history.c
        stmt = select(
            h.resource_type, h.id, h.version_id, h.last_updated, h.deleted, h.body, h.method, h.seq
        )
        if query.resource_type is not None:
            stmt = stmt.where(h.resource_type == query.resource_type)
        if query.id is not None:
            stmt = stmt.where(h.id == query.id)
        if query.since is not None:
            stmt = stmt.where(h.last_updated >= query.since)
        if query.at is not None:
            start, end = query.at
            later = resource_history.alias("later")
            # Versions current at some moment of [start, end): written before the
            # end, and not already replaced by a version written at or before the start.
            stmt = stmt.where(
                h.last_updated < end,
                ~exists().where(
                    later.c.resource_type == h.resource_type,
                    later.c.id == h.id,
                    later.c.version_id > h.version_id,
                    later.c.last_updated <= start,
                ),
            )
        if query.before_seq is not None:
            stmt = stmt.where(h.seq < query.before_seq)
        stmt = stmt.order_by(h.seq.desc()).limit(query.count)
        return [
            StoredVersion(
                r.resource_type,
                r.id,
                r.version_id,
                r.last_updated,
                r.deleted,
                r.body,
                r.method,
                r.seq,
            )
            for r in self.conn.execute(stmt)
        ]

    def search(
        self,
        query: SearchQuery,
        context: SearchContext,
        *,
        base_url: str,
        params: list[tuple[str, str]],
    ) -> dict:
        """A searchset Bundle for ``query`` (http://hl7.org/fhir/R4/search.html)."""
        context = replace(
            context,
            dialect=self.dialect,
            value_set_codes=lambda url: valuesets.codes(self.conn, url),
        )
        return search_bundle.run(self.conn, query, context, base_url=base_url, params=params)

    # -- writes --------------------------------------------------------------

    def create(self, resource_json: dict, *, id: str | None = None) -> StoredVersion:
        """Insert version 1 under a new server-assigned id."""
        resource_id = id or meta.new_id()
        last_updated = _next_timestamp(None)
        stamped = self._stamped(resource_json, resource_id, 1, last_updated)
        body = jsonio.dumps(stamped)
        pk = self.conn.execute(
            insert(resource)
            .values(
                resource_type=resource_json["resourceType"],
                id=resource_id,
                version_id=1,
                last_updated=last_updated,
                deleted=False,
                patient_id=_patient_id(resource_json["resourceType"], resource_id),
                body=body,
            )
            .returning(resource.c.pk)
        ).scalar_one()
        self._write_index(pk, stamped, replace=False)
        return self._append_history(
            resource_json["resourceType"], resource_id, 1, last_updated, False, "POST", body
        )

    def update(
        self, resource_json: dict, id: str, *, if_match: int | None = None, method: str = "PUT"
    ) -> WriteResult:
        """Write the next version of ``Type/id`` (version 1 if it never existed: update-as-create)."""
        resource_type = resource_json["resourceType"]
        current = self._lock_current(resource_type, id)
        if current is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"Resource `{resource_type}/{id}` does not exist, so version {if_match} does not match."
                )
            created = self._insert_first_version(resource_json, id, method)
            if created is not None:
                return WriteResult(created, True)
            # Another transaction created it between our lookup and insert: lock and update it.
            current = self._lock_current(resource_type, id)
            assert current is not None
        pk, version_id, previous_updated, _deleted = current
        if if_match is not None and if_match != version_id:
            raise PreconditionFailed(
                f"Resource `{resource_type}/{id}` is at version {version_id}, not {if_match} (If-Match)."
            )
        new_version = version_id + 1
        last_updated = _next_timestamp(previous_updated)
        stamped = self._stamped(resource_json, id, new_version, last_updated)
        body = jsonio.dumps(stamped)
        self.conn.execute(
            update(resource)
            .where(resource.c.pk == pk)
            .values(version_id=new_version, last_updated=last_updated, deleted=False, body=body)
        )
        self._write_index(pk, stamped, replace=True)
        version = self._append_history(
            resource_type, id, new_version, last_updated, False, method, body
        )
        # A write after a delete brings the resource back; per R4 that is an update.
        return WriteResult(version, False)

    def delete(
        self, resource_type: str, id: str, *, if_match: int | None = None
    ) -> StoredVersion | None:
        """Write a tombstone version. Returns None when there was nothing to delete."""
        current = self._lock_current(resource_type, id)
        if current is None:
            return None
        pk, version_id, previous_updated, deleted = current
        if if_match is not None and if_match != version_id:
            raise PreconditionFailed(
                f"Resource `{resource_type}/{id}` is at version {version_id}, not {if_match} (If-Match)."
            )
        if deleted:
            return None  # Deleting again is harmless and writes nothing.
        new_version = version_id + 1
        last_updated = _next_timestamp(previous_updated)
        self.conn.execute(
            update(resource)
            .where(resource.c.pk == pk)
            .values(version_id=new_version, last_updated=last_updated, deleted=True, body=None)
        )
        index_writer.delete_rows(self.conn, [pk])
        return self._append_history(
            resource_type, id, new_version, last_updated, True, "DELETE", None
        )

    # -- helpers -------------------------------------------------------------

    def replace_meta(self, resource_type: str, id: str, meta: dict) -> StoredVersion | None:
        """Set the tags, security labels and profiles of the current version in place.

        ``$meta-add`` / ``$meta-delete`` change no content, so they make no new
        version (http://hl7.org/fhir/R4/resource.html#tag-updates): the current
        version's stored body (and its history row) gets the new meta, and
        versionId and lastUpdated stay. None when there is no current version.
        """
        current = self._lock_current(resource_type, id)
        if current is None or current[3]:
            return None
        pk, version_id, last_updated, _deleted = current
        stored = self.conn.execute(select(resource.c.body).where(resource.c.pk == pk)).scalar_one()
        resource_json = jsonio.loads(stored)
        kept = {
            k: v
            for k, v in (resource_json.get("meta") or {}).items()
            if k in ("versionId", "lastUpdated")
        }
        resource_json["meta"] = {**kept, **{k: v for k, v in meta.items() if v}}
        body = jsonio.dumps(resource_json)
        self.conn.execute(update(resource).where(resource.c.pk == pk).values(body=body))
        h = resource_history.c
        self.conn.execute(
            update(resource_history)
            .where(h.resource_type == resource_type, h.id == id, h.version_id == version_id)
            .values(body=body)
        )
        self._write_index(pk, resource_json, replace=True)
        return StoredVersion(resource_type, id, version_id, last_updated, False, body)

    # -- conditional interactions ------------------------------------------------

    def find(self, resource_type: str, params: list[tuple[str, str]], *, limit: int) -> list[str]:
        """Ids of up to ``limit`` current resources matching search criteria.

        The criteria of conditional interactions: an unknown parameter is a 400
        (ignoring it would widen the match to resources the client did not mean).
        """
        query = search_parse.parse(resource_type, params, strict=True)
        if not query.criteria:
            raise PreconditionFailed(
                f"A conditional interaction on {resource_type} needs search criteria."
            )
        context = SearchContext(
            base_url=self.base_url,
            dialect=self.dialect,
            value_set_codes=lambda url: valuesets.codes(self.conn, url),
        )
        stmt = search_plan.matching_ids(resource_type, query.criteria, context).limit(limit)
        return list(self.conn.scalars(stmt))

    def lock_criteria(self, resource_type: str, params: list[tuple[str, str]]) -> None:
        """Serialize conditional writes with the same criteria until this transaction ends.

        Check-then-write is only race-free under a lock the database holds: on
        PostgreSQL a transaction-scoped advisory lock keyed by the criteria (a
        second writer waits, then its search sees the first one's resource);
        SQLite writers already hold the database lock (BEGIN IMMEDIATE).
        """
        if self.dialect != "postgresql":
            return
        key = resource_type + "?" + "&".join(f"{k}={v}" for k, v in sorted(params))
        self.conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0))", {"key": key}
        )

    def read_for_update(self, resource_type: str, id: str) -> StoredVersion | None:
        """The current version, locked until the transaction ends (read-modify-write: PATCH)."""
        stmt = select(
            resource.c.version_id, resource.c.last_updated, resource.c.deleted, resource.c.body
        ).where(resource.c.resource_type == resource_type, resource.c.id == id)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        if row is None:
            return None
        return StoredVersion(
            resource_type, id, row.version_id, row.last_updated, row.deleted, row.body
        )

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A nested transaction: what fails inside it is undone, the rest stays (batch entries)."""
        with self.conn.begin_nested():
            yield

    def meta_in_use(self, resource_type: str | None) -> dict:
        """The tags, security labels and profiles current resources carry (of one type, or all)."""
        tokens, uris = SEARCH_TABLES["token"], SEARCH_TABLES["uri"]
        meta: dict = {}
        for key, param in (("tag", "_tag"), ("security", "_security")):
            stmt = select(tokens.c.system, tokens.c.code).where(tokens.c.param == param).distinct()
            if resource_type is not None:
                stmt = stmt.where(tokens.c.resource_type == resource_type)
            codings = [
                {k: v for k, v in (("system", row.system), ("code", row.code)) if v}
                for row in self.conn.execute(stmt.order_by(tokens.c.system, tokens.c.code))
            ]
            if codings:
                meta[key] = codings
        stmt = select(uris.c.value).where(uris.c.param == "_profile").distinct()
        if resource_type is not None:
            stmt = stmt.where(uris.c.resource_type == resource_type)
        profiles = list(self.conn.scalars(stmt.order_by(uris.c.value)))
        if profiles:
            meta["profile"] = profiles
        return meta

    def _lock_current(self, resource_type: str, id: str) -> tuple[int, int, datetime, bool] | None:
        stmt = select(
            resource.c.pk, resource.c.version_id, resource.c.last_updated, resource.c.deleted
        ).where(resource.c.resource_type == resource_type, resource.c.id == id)
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update()
        row = self.conn.execute(stmt).first()
        return None if row is None else (row.pk, row.version_id, row.last_updated, row.deleted)

    def _insert_first_version(
        self, resource_json: dict, id: str, method: str
    ) -> StoredVersion | None:
        resource_type = resource_json["resourceType"]
        last_updated = _next_timestamp(None)
        stamped = self._stamped(resource_json, id, 1, last_updated)
        body = jsonio.dumps(stamped)
        dialect_insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        stmt = (
            dialect_insert(resource)
            .values(
                resource_type=resource_type,
                id=id,
                version_id=1,
                last_updated=last_updated,
                deleted=False,
                patient_id=_patient_id(resource_type, id),
                body=body,
            )
            .on_conflict_do_nothing(index_elements=[resource.c.resource_type, resource.c.id])
            .returning(resource.c.pk)
        )
        row = self.conn.execute(stmt).first()
        if row is None:
            return None
        self._write_index(row.pk, stamped, replace=False)
        return self._append_history(resource_type, id, 1, last_updated, False, method, body)

    def _append_history(
        self,
        resource_type: str,
        id: str,
        version_id: int,
        last_updated: datetime,
        deleted: bool,
        method: str,
        body: bytes | None,
    ) -> StoredVersion:
        seq = self.conn.execute(
            insert(resource_history)
            .values(
                resource_type=resource_type,
                id=id,
                version_id=version_id,
                last_updated=last_updated,
                deleted=deleted,
                method=method,
                body=body,
            )
            .returning(resource_history.c.seq)
        ).scalar_one()
        return StoredVersion(
            resource_type, id, version_id, last_updated, deleted, body, method, seq
        )

    def _write_index(self, pk: int, resource_json: dict, *, replace: bool) -> None:
        """The search index rows of the new current version (same transaction as the write).

        ``resource_json`` is the version as stored (with its id and meta), so
        that ``_id`` and ``_lastUpdated`` index what clients read back.
        """
        if replace:
            index_writer.delete_rows(self.conn, [pk])
        rows_by_type = extract.index_rows(resource_json, base_url=self.base_url)
        for rows in rows_by_type.values():
            for row in rows:
                row["resource_pk"] = pk
        index_writer.insert_rows(self.conn, rows_by_type)

    @staticmethod
    def _stamped(resource_json: dict, id: str, version_id: int, last_updated: datetime) -> dict:
        return meta.stamp(
            resource_json, resource_id=id, version_id=version_id, last_updated=last_updated
        )

    # -- operations ($everything, $lastn, $stats) --------------------------------

    def everything(
        self,
        query: search_everything.EverythingQuery,
        *,
        base_url: str,
        params: list[tuple[str, str]],
    ) -> dict:
        """A page of Patient/$everything (http://hl7.org/fhir/R4/patient-operation-everything.html)."""
        return search_selection.run(
            self.conn,
            lambda r: search_everything.conditions(query, r),
            query.paging,
            base_url=base_url,
            params=params,
            mode=search_everything.mode,
        )

    def lastn(
        self,
        query: search_lastn.LastnQuery,
        context: SearchContext,
        *,
        base_url: str,
        params: list[tuple[str, str]],
    ) -> dict:
        """A page of Observation/$lastn (http://hl7.org/fhir/R4/observation-operation-lastn.html)."""
        context = self._search_context(context)
        chosen = search_lastn.chosen_pks(query, context)
        search = query.search
        paging = search_selection.Paging(
            path=search.path or "Observation/$lastn",
            count=search.count,
            cursor=search.cursor,
            total=search.total,
            summary=search.summary,
            elements=search.elements,
            warnings=search.warnings,
        )
        return search_selection.run(
            self.conn, lambda r: [r.c.pk.in_(chosen)], paging, base_url=base_url, params=params
        )

    def observation_stats(
        self, query: search_stats.StatsQuery, context: SearchContext
    ) -> search_stats.StatsResult:
        """The series of Observation/$stats (http://hl7.org/fhir/R4/observation-operation-stats.html)."""
        return search_stats.compute(self.conn, query, self._search_context(context))

    def _search_context(self, context: SearchContext) -> SearchContext:
        return replace(
            context,
            dialect=self.dialect,
            value_set_codes=lambda url: valuesets.codes(self.conn, url),
        )


def _patient_id(resource_type: str, id: str) -> str | None:
    # Compartment membership of other types is computed by the consent work
    # from the Patient CompartmentDefinition.
    return id if resource_type == "Patient" else None


__all__ = ["HistoryQuery", "Repository", "SqlRepository", "StoredVersion", "WriteResult"]
