"""Bulk Data export: what an export job exports, and the worker side that writes its files.

http://hl7.org/fhir/uv/bulkdata/export.html. The kick-off
(``operations/bulk_export.py``) checks the request and queues an
:class:`ExportRequest`; a worker runs it with :class:`Exporter`:

- one ndjson file per resource type, split every ``max_lines`` lines;
- resources read in batches of 1,000 with a keyset on the primary key
  (``pk > last``), never OFFSET, so a batch costs the same at the end of a
  million rows as at the start and rows written meanwhile do not shift the
  batches; with filters, the matching pks are selected once and the bodies
  read a batch of pks at a time (see :func:`_snapshot`);
- ``_since`` keeps resources changed after it; ``_typeFilter`` queries run
  through the server's own search planner (several for one type are OR-ed,
  types without one are exported whole);
- at Patient and Group level only resources in the compartments of the
  patients (all of them, or the Group's active Patient members) are exported,
  with membership from the official R4 Patient CompartmentDefinition.

The export holds the data as of the job's ``transaction_time`` (the manifest's
``transactionTime``): a resource changed while the export runs is written as
its version at that instant, read from the history; one created later is left
out, and one deleted later is still written. Filters (``_typeFilter``,
compartments) read the search index, which holds current versions only, so for
resources changed during the run they judge the current version.
"""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    any_,
    false,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger, String

from fhirserver.bulk import jobs
from fhirserver.errors import BadRequest, FhirError
from fhirserver.resources import jsonio
from fhirserver.resources.registry import is_resource_type, resource_types
from fhirserver.search import valuesets
from fhirserver.search.compartments import compartment
from fhirserver.search.parse import parse
from fhirserver.search.plan import matching_pks
from fhirserver.search.types import SearchContext
from fhirserver.storage.session import Database
from fhirserver.storage.tables import SEARCH_TABLES, resource, resource_history

KIND = "export"
SYSTEM, PATIENT, GROUP = "system", "patient", "group"
#: The content type of every output file (the spec's default and only required format).
NDJSON = "application/fhir+ndjson"
#: The ``_outputFormat`` values the spec requires a server to accept for ndjson.
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})

#: How often a running export reports progress (its heartbeat; a cancel takes effect then).
PROGRESS_SECONDS = 1.0

# A _typeFilter value may hold several queries separated by commas; a comma
# inside a query (an OR of values) is not followed by ``Type?``.
_QUERY_START = re.compile(r",(?=[A-Z][A-Za-z]*\?)")


class ExportFailed(FhirError):
    """The export cannot be completed (the job fails with this message)."""

    status, code = 500, "processing"


@dataclass(frozen=True)
class ExportRequest:
    """What to export, as the kick-off accepted it (stored with the job as JSON)."""

    level: str
    #: Base URL of the kick-off request: local absolute references resolve against it.
    base_url: str
    group_id: str | None = None
    #: ``_type``: the types in this order; empty = every type in scope.
    types: tuple[str, ...] = ()
    #: ``_since``: resources changed after this instant only.
    since: datetime | None = None
    #: ``_typeFilter`` queries as sent, e.g. ``Observation?code=http://loinc.org|8480-6``.
    type_filters: tuple[str, ...] = ()
    #: ``Prefer: handling=lenient``: unknown search parameters in a filter are ignored.
    lenient: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "base_url": self.base_url,
            "group_id": self.group_id,
            "types": list(self.types),
            "since": self.since.isoformat() if self.since else None,
            "type_filters": list(self.type_filters),
            "lenient": self.lenient,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportRequest:
        return cls(
            level=data["level"],
            base_url=data["base_url"],
            group_id=data.get("group_id"),
            types=tuple(data.get("types") or ()),
            since=datetime.fromisoformat(data["since"]) if data.get("since") else None,
            type_filters=tuple(data.get("type_filters") or ()),
            lenient=bool(data.get("lenient")),
        )

    def types_in_scope(self) -> tuple[str, ...]:
        """``_type``, or every type a patient's compartment holds (Patient and Group level), or every type."""
        if self.types:
            return self.types
        if self.level == SYSTEM:
            return resource_types()
        patient = compartment("Patient")
        assert patient is not None
        return ("Patient", *sorted(t for t in patient.members if t != "Patient"))


def split_type_filters(values: Sequence[str]) -> tuple[str, ...]:
    """Each ``_typeFilter`` value, split into its queries (repeated and comma-separated forms)."""
    return tuple(
        query.strip() for value in values for query in _QUERY_START.split(value) if query.strip()
    )


def type_filters(
    filters: Sequence[str], *, lenient: bool, context: SearchContext
) -> dict[str, list[Select]]:
    """``_typeFilter`` queries compiled by the search parser and planner: per type, the
    SELECTs of the matching resources' pks (400 for a malformed query or value).

    Unknown search parameters are a 400 unless ``Prefer: handling=lenient``: a
    filter silently ignored would export more than the client asked for.
    """
    queries: dict[str, list[Select]] = {}
    for text in filters:
        resource_type, mark, query_string = text.partition("?")
        if not mark or not is_resource_type(resource_type):
            raise BadRequest(
                f"_typeFilter `{text}` is not a search query of a resource type (e.g. Observation?status=final)."
            )
        params = parse_qsl(query_string, keep_blank_values=True)
        query = parse(resource_type, params, strict=not lenient)
        if query.includes or query.sort:
            raise BadRequest(f"_typeFilter `{text}`: _include, _revinclude and _sort do not apply.")
        queries.setdefault(resource_type, []).append(
            matching_pks(resource_type, query.criteria, context)
        )
    return queries


@dataclass(frozen=True)
class Exporter:
    """Runs an export job (the worker's runner for jobs of kind ``export``)."""

    #: Resources read per statement.
    batch_size: int = 1000
    #: Lines per ndjson file; a type with more gets further files.
    max_lines: int = 10_000
    #: Bytes per file, for types whose resources are large.
    max_bytes: int = 64 * 1024 * 1024

    def __call__(self, database: Database, job: jobs.Job) -> None:
        request = ExportRequest.from_json(job.parameters)
        assert job.transaction_time is not None  # set when the job was claimed
        files = _Files(database, job.lease, self)
        with database.transaction(write=False) as conn:
            context = SearchContext(
                base_url=request.base_url,
                dialect=conn.dialect.name,
                value_set_codes=lambda url: valuesets.codes(conn, url),
            )
            filters = type_filters(request.type_filters, lenient=request.lenient, context=context)
            patients = _patients(conn, request)
            types = request.types_in_scope()
            for number, resource_type in enumerate(types, 1):
                files.progress = f"{resource_type} ({number} of {len(types)} types)"
                r = resource.alias("r")
                scope = _scope(r, resource_type, request, patients, filters, context.dialect)
                if scope is None:
                    continue
                for bodies in _snapshot(
                    conn, r, resource_type, scope, request, job.transaction_time, self
                ):
                    files.add(resource_type, bodies)
                files.finish(resource_type)


class _Files:
    """The job's ndjson files, each stored in the database as soon as it is full."""

    def __init__(self, database: Database, lease: jobs.Lease, exporter: Exporter):
        self.database, self.lease, self.exporter = database, lease, exporter
        self.lines: list[bytes] = []
        self.size = 0
        self.position = 0
        self.number = 0
        self.total = 0
        self.progress = ""
        self.reported = time.monotonic()

    def add(self, resource_type: str, bodies: list[bytes]) -> None:
        for body in bodies:
            self.lines.append(body)
            self.size += len(body) + 1
            if len(self.lines) >= self.exporter.max_lines or self.size >= self.exporter.max_bytes:
                self._store(resource_type)
        self.total += len(bodies)
        # The heartbeat, and the moment a cancelled job stops; not after every
        # batch, as each report is a commit (measured ~25 ms on PostgreSQL here).
        if time.monotonic() - self.reported >= PROGRESS_SECONDS:
            jobs.report_progress(self.database, self.lease, self._progress())
            self.reported = time.monotonic()

    def finish(self, resource_type: str) -> None:
        self._store(resource_type)
        self.number = 0

    def _progress(self) -> str:
        return f"{self.total} resources written; exporting {self.progress}."

    def _store(self, resource_type: str) -> None:
        if not self.lines:
            return
        self.position += 1
        self.number += 1
        output = jobs.Output(
            name=f"{resource_type}-{self.number}.ndjson",
            position=self.position,
            resource_type=resource_type,
            count=len(self.lines),
        )
        content = b"\n".join(self.lines) + b"\n"
        jobs.add_output(self.database, self.lease, output, content, self._progress())
        self.lines, self.size = [], 0


def _snapshot(
    conn: Connection,
    r: Any,
    resource_type: str,
    scope: _Scope,
    request: ExportRequest,
    transaction_time: datetime,
    exporter: Exporter,
) -> Iterator[list[bytes]]:
    """Bodies of the type's matching resources as of ``transaction_time``, a batch at a time.

    Without filters the resources are read by keyset (``pk > last``, the
    (type, pk) index of live resources). With filters (``_typeFilter``,
    compartments: subqueries over the search index) the matching pks are
    selected once, in one pass, and the bodies then read a batch of pks at a
    time: a filter repeated in every keyset batch is evaluated whole again by
    each (measured on PostgreSQL: every batch hashed the whole reference index
    of the type, 0.3 s a batch at 20,000 resources, quadratic in the export).
    """
    batches = (
        _filtered_batches(conn, r, resource_type, scope, exporter.batch_size)
        if scope.filters
        else _keyset_batches(conn, r, resource_type, scope, transaction_time, exporter.batch_size)
    )
    for rows in batches:
        changed = [row.id for row in rows if row.last_updated > transaction_time]
        earlier = _versions_as_of(conn, resource_type, changed, transaction_time)
        bodies = []
        for row in rows:
            if row.last_updated <= transaction_time:
                bodies.append(_bytes(row.body))
                continue
            version = earlier.get(row.id)
            if version is not None and (
                request.since is None or version.last_updated > request.since
            ):
                bodies.append(_bytes(version.body))
        if bodies:
            yield bodies


def _bytes(body: bytes | str) -> bytes:
    # PostgreSQL hands the JSONB body back as text (cast in the SELECT), SQLite as bytes.
    return body.encode() if isinstance(body, str) else body


def _columns(r: Any) -> tuple[Any, ...]:
    return r.c.pk, r.c.id, r.c.last_updated, r.c.body


def _keyset_batches(
    conn: Connection,
    r: Any,
    resource_type: str,
    scope: _Scope,
    transaction_time: datetime,
    size: int,
) -> Iterator[list[Any]]:
    """The type's rows in pk order, ``size`` at a time: ``pk > last`` per batch, never OFFSET."""
    live = r.c.deleted == false()
    # Deleted after the transaction time: they existed then, so they are exported.
    deleted_since = (r.c.deleted == true()) & (r.c.last_updated > transaction_time)
    for state in (live, deleted_since):
        stmt = select(*_columns(r)).where(r.c.resource_type == resource_type, state, *scope.rows)
        last = None
        while True:
            page = stmt if last is None else stmt.where(r.c.pk > last)
            rows = list(conn.execute(page.order_by(r.c.pk).limit(size)))
            if rows:
                yield rows
            if len(rows) < size:
                break
            last = rows[-1].pk


def _filtered_batches(
    conn: Connection, r: Any, resource_type: str, scope: _Scope, size: int
) -> Iterator[list[Any]]:
    """The matching rows in pk order: their pks in one pass, then ``size`` bodies at a time.

    A resource deleted during the run is left out here: the search index the
    filters read holds live resources only.
    """
    matching = select(r.c.pk).where(
        r.c.resource_type == resource_type, r.c.deleted == false(), *scope.rows, *scope.filters
    )
    # 8 bytes a match: a million matches hold 8 MB.
    pks = array("q", conn.execute(matching.order_by(r.c.pk)).scalars())
    for start in range(0, len(pks), size):
        batch = _one_of(r.c.pk, list(pks[start : start + size]), conn.dialect.name)
        yield list(conn.execute(select(*_columns(r)).where(batch).order_by(r.c.pk)))


def _versions_as_of(
    conn: Connection, resource_type: str, ids: list[str], moment: datetime
) -> dict[str, Any]:
    """id -> the version current at ``moment`` (absent when none, or it was deleted then)."""
    if not ids:
        return {}
    h = resource_history
    rows = conn.execute(
        select(h.c.id, h.c.last_updated, h.c.deleted, h.c.body)
        .where(h.c.resource_type == resource_type, h.c.id.in_(ids), h.c.last_updated <= moment)
        .order_by(h.c.id, h.c.version_id)
    )
    latest = {row.id: row for row in rows}  # ascending versions: the last one wins
    return {id: row for id, row in latest.items() if not row.deleted}


@dataclass(frozen=True)
class _Scope:
    """What a resource of one type must meet to be exported."""

    #: Conditions on the resource row itself (``_since``).
    rows: tuple[ColumnElement[bool], ...]
    #: Subqueries over the search index (``_typeFilter``, compartment membership).
    filters: tuple[ColumnElement[bool], ...]


def _scope(
    r: Any,
    resource_type: str,
    request: ExportRequest,
    patients: list[str] | None,
    filters: dict[str, list[Select]],
    dialect: str,
) -> _Scope | None:
    """The type's scope; None when no resource of it can be exported."""
    rows: list[ColumnElement[bool]] = []
    subqueries: list[ColumnElement[bool]] = []
    if request.since is not None:
        rows.append(r.c.last_updated > request.since)
    queries = filters.get(resource_type)
    if queries:
        # Several queries for one type: a resource matching any of them is exported.
        subqueries.append(or_(*[r.c.pk.in_(matches) for matches in queries]))
    if request.level != SYSTEM:
        membership = _in_patient_compartments(r, resource_type, patients, dialect)
        if membership is None:
            return None
        subqueries.append(membership)
    return _Scope(tuple(rows), tuple(subqueries))


def _in_patient_compartments(
    r: Any, resource_type: str, patients: list[str] | None, dialect: str
) -> ColumnElement[bool] | None:
    """In the compartment of one of ``patients`` (of any stored Patient when None).

    http://hl7.org/fhir/R4/compartmentdefinition-patient.html: a resource is in
    a Patient's compartment when one of the parameters listed for its type
    refers to that Patient (read from the reference index), or it is the Patient.
    """
    if resource_type == "Patient":
        return true() if patients is None else _one_of(r.c.id, patients, dialect)
    definition = compartment("Patient")
    assert definition is not None
    parameters = definition.parameters(resource_type)
    if not parameters:
        return None
    refs = SEARCH_TABLES["reference"].alias("compartment_ref")
    targets: ColumnElement[bool]
    if patients is None:
        stored = resource.alias("compartment_patient")
        targets = refs.c.target_id.in_(
            select(stored.c.id).where(
                stored.c.resource_type == "Patient", stored.c.deleted == false()
            )
        )
    else:
        targets = _one_of(refs.c.target_id, patients, dialect)
    return r.c.pk.in_(
        select(refs.c.resource_pk).where(
            refs.c.resource_type == resource_type,
            refs.c.param.in_([p.code for p in parameters]),
            refs.c.target_type == "Patient",
            targets,
        )
    )


def _one_of(column: Any, values: list[str] | list[int], dialect: str) -> ColumnElement[bool]:
    """``column IN values`` with the values as ONE bound parameter: a Group may have more
    members than a statement may have parameters, and a thousand parameters cost more
    to send than one array."""
    if not values:
        return false()
    if dialect == "postgresql":
        item = BigInteger() if isinstance(values[0], int) else String()
        return column == any_(literal(values, ARRAY(item)))
    listed = func.json_each(literal(jsonio.dumps(values).decode())).table_valued("value")
    return column.in_(select(listed.c.value))


def _patients(conn: Connection, request: ExportRequest) -> list[str] | None:
    """The ids of the patients whose data is exported: a Group's members; None for all."""
    if request.level != GROUP:
        return None
    assert request.group_id is not None
    row = conn.execute(
        select(resource.c.deleted, resource.c.body).where(
            resource.c.resource_type == "Group", resource.c.id == request.group_id
        )
    ).first()
    if row is None or row.deleted:
        raise ExportFailed(f"Group `{request.group_id}` no longer exists.")
    return group_patients(jsonio.loads(row.body), request.base_url)


def group_patients(group: dict, base_url: str) -> list[str]:
    """Ids of the Patients among a Group's members (``Group.member.entity``), inactive ones left out.

    http://hl7.org/fhir/R4/group-definitions.html#Group.member.inactive: an
    inactive member is no longer in the group.
    """
    ids: list[str] = []
    for member in group.get("member") or []:
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        if not isinstance(reference, str):
            continue
        if base_url and reference.startswith(base_url + "/"):
            reference = reference[len(base_url) + 1 :]
        parts = reference.split("/")
        if len(parts) >= 2 and parts[0] == "Patient" and parts[1] not in ids:
            ids.append(parts[1])
    return ids
