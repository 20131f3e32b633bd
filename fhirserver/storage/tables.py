"""The database schema (SQLAlchemy Core). Changes go through an Alembic migration.

- ``resource``: the current version of every resource (a tombstone once deleted).
- ``resource_history``: every version ever written, append-only. ``seq`` is a
  global, increasing number used to page history newest-first with a keyset.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    cast,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, UserDefinedType

metadata = MetaData()


class _JsonbAsText(UserDefinedType):
    """JSONB in the DDL, but bound and fetched as text (no JSON round trip in Python)."""

    cache_ok = True

    def get_col_spec(self, **_kw) -> str:
        return "JSONB"

    def bind_expression(self, bindvalue):
        return cast(bindvalue, JSONB)

    def column_expression(self, column):
        return cast(column, Text)


class JsonDocument(TypeDecorator):
    """A resource's JSON, handed in and out as UTF-8 bytes, never parsed.

    On PostgreSQL the column is JSONB (queryable, compact); it is bound as text
    and read back cast to text, so the server returns it without building
    Python objects. On SQLite it is TEXT.
    """

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return _JsonbAsText()
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes | bytearray) else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else value


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


resource = Table(
    "resource",
    metadata,
    # A surrogate key: search index rows point at it (8 bytes instead of type + id).
    Column(
        "pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # The Patient whose compartment the resource is in (filled by the consent
    # work; a Patient is in its own compartment).
    Column("patient_id", String(64), nullable=True),
    Column("body", JsonDocument, nullable=True),
)
Index("ux_resource_type_id", resource.c.resource_type, resource.c.id, unique=True)
Index("ix_resource_type_updated", resource.c.resource_type, resource.c.last_updated)
# The live resources of a type in key order, narrow: search pages walk it
# (index-only) instead of the wide table rows (migration 0006).
Index(
    "ix_resource_live",
    resource.c.resource_type,
    resource.c.pk,
    resource.c.id,
    postgresql_where=resource.c.deleted == false(),
    sqlite_where=resource.c.deleted == false(),
)
Index("ix_resource_patient", resource.c.patient_id)

resource_history = Table(
    "resource_history",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # POST, PUT, PATCH or DELETE: Bundle.entry.request.method of a history entry.
    Column("method", String(8), nullable=False),
    Column("body", JsonDocument, nullable=True),
)
Index(
    "ux_history_version",
    resource_history.c.resource_type,
    resource_history.c.id,
    resource_history.c.version_id,
    unique=True,
)
Index("ix_history_type_seq", resource_history.c.resource_type, resource_history.c.seq)
Index("ix_history_updated", resource_history.c.last_updated)


# -- search indexes ----------------------------------------------------------
# One table per SearchParameter.type (http://hl7.org/fhir/R4/search.html#ptypes),
# rows for the current version of each resource only, rewritten in the same
# transaction as every write. Every row names its resource by ``resource_pk``
# and repeats ``resource_type`` and the parameter ``code`` so that the common
# query shape (type + parameter + value) is one index range scan.

_FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def _index_table(name: str, *columns: Column) -> Table:
    return Table(
        name,
        metadata,
        Column("resource_pk", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
        Column("resource_type", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        # Which element of the resource a composite parameter's component row
        # came from (NULL for ordinary rows): components match within one element.
        Column("group_no", Integer, nullable=True),
        *columns,
    )


search_string = _index_table(
    "search_string",
    # Lower case, accents removed (NFKD without combining marks): what
    # starts-with and :contains compare against.
    Column("normalized", String(512), nullable=False),
    # The value as written, for :exact.
    Column("exact", Text, nullable=False),
)
search_token = _index_table(
    "search_token",
    Column("system", Text, nullable=True),
    Column("code", String(512), nullable=True),
    # Normalized display / text, for :text.
    Column("text", String(512), nullable=True),
)
search_date = _index_table(
    "search_date",
    # The value's range [low, high) in UTC: a date's precision makes it a range.
    Column("low", UtcDateTime, nullable=False),
    Column("high", UtcDateTime, nullable=False),
)
search_number = _index_table(
    "search_number",
    Column("value", Numeric(asdecimal=True), nullable=False),
)
search_quantity = _index_table(
    "search_quantity",
    Column("value", Numeric(asdecimal=True), nullable=False),
    Column("system", Text, nullable=True),
    Column("code", String(128), nullable=True),
    Column("unit", String(128), nullable=True),
    # The value in the UCUM base unit of its dimension (g, m, L, s, ...), so
    # that 1 g and 1000 mg compare equal.
    Column("canonical_value", Numeric(asdecimal=True), nullable=True),
    Column("canonical_code", String(128), nullable=True),
)
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    # An absolute URL or canonical that is not a reference to this server.
    Column("url", Text, nullable=True),
    Column("identifier_system", Text, nullable=True),
    Column("identifier_value", String(512), nullable=True),
)
search_uri = _index_table(
    "search_uri",
    Column("value", Text, nullable=False),
)

search_text = _index_table(
    "search_text",
    # The text of _text (narrative) or _content (every string), searched with
    # PostgreSQL full-text search, or SQLite FTS5 (search_text_fts, kept in step
    # by triggers; see migration 0004).
    Column("content", Text, nullable=False),
)

SEARCH_TABLES = {
    "string": search_string,
    "token": search_token,
    "date": search_date,
    "number": search_number,
    "quantity": search_quantity,
    "reference": search_reference,
    "uri": search_uri,
    "fulltext": search_text,
}

# Each (type, parameter, value) index ends with resource_pk, so a criterion is
# answered from the index alone (an index-only scan on PostgreSQL) instead of
# one heap fetch per matching row (migration 0006; docs/PERFORMANCE.md).
# varchar_pattern_ops: PostgreSQL uses the index for LIKE 'prefix%' (starts-with) only with it.
Index(
    "ix_search_string",
    search_string.c.resource_type,
    search_string.c.param,
    search_string.c.normalized,
    search_string.c.resource_pk,
    postgresql_ops={"normalized": "varchar_pattern_ops"},
)
Index("ix_search_string_pk", search_string.c.resource_pk)
Index(
    "ix_search_token",
    search_token.c.resource_type,
    search_token.c.param,
    search_token.c.code,
    search_token.c.system,
    search_token.c.resource_pk,
)
Index("ix_search_token_pk", search_token.c.resource_pk)
Index(
    "ix_search_date",
    search_date.c.resource_type,
    search_date.c.param,
    search_date.c.low,
    search_date.c.high,
    search_date.c.resource_pk,
)
# Descending date sorts walk the latest ends in order (migration 0005).
Index(
    "ix_search_date_high",
    search_date.c.resource_type,
    search_date.c.param,
    search_date.c.high,
    search_date.c.resource_pk,
)
# Covering: a search probing a resource's dates reads the index alone (migration 0008).
Index(
    "ix_search_date_pk",
    search_date.c.resource_pk,
    search_date.c.resource_type,
    search_date.c.param,
    search_date.c.low,
    search_date.c.high,
)
Index(
    "ix_search_number",
    search_number.c.resource_type,
    search_number.c.param,
    search_number.c.value,
    search_number.c.resource_pk,
)
Index("ix_search_number_pk", search_number.c.resource_pk)
Index(
    "ix_search_quantity",
    search_quantity.c.resource_type,
    search_quantity.c.param,
    search_quantity.c.canonical_code,
    search_quantity.c.canonical_value,
    search_quantity.c.resource_pk,
)
Index("ix_search_quantity_pk", search_quantity.c.resource_pk)
Index(
    "ix_search_reference",
    search_reference.c.resource_type,
    search_reference.c.param,
    search_reference.c.target_type,
    search_reference.c.target_id,
    search_reference.c.resource_pk,
)
Index("ix_search_reference_target", search_reference.c.target_type, search_reference.c.target_id)
Index("ix_search_reference_pk", search_reference.c.resource_pk)
Index(
    "ix_search_uri",
    search_uri.c.resource_type,
    search_uri.c.param,
    search_uri.c.value,
    search_uri.c.resource_pk,
)
Index("ix_search_uri_pk", search_uri.c.resource_pk)
Index("ix_search_text_pk", search_text.c.resource_pk)


# -- bulk data jobs ------------------------------------------------------------
# Asynchronous bulk requests (http://hl7.org/fhir/uv/bulkdata/export.html) live
# in the database, not in a server process: any process may claim a queued job
# (fhirserver/bulk/jobs.py) and any process may answer its status or serve its
# files, which are stored here too.

bulk_job = Table(
    "bulk_job",
    metadata,
    # Random (uuid4): the status URL is the job's only handle, so it must not be guessable.
    Column("id", String(64), primary_key=True),
    # export or import.
    Column("kind", String(16), nullable=False),
    # queued, running, completed, failed or cancelled.
    Column("status", String(16), nullable=False),
    # The kick-off request URL, repeated in the manifest's `request`.
    Column("request_url", Text, nullable=False),
    # What to do, as JSON (for an export: level, types, _since, _typeFilter, ...).
    Column("parameters", JsonDocument, nullable=False),
    # Free text for the X-Progress header while queued or running.
    Column("progress", Text, nullable=True),
    # Why a failed job failed (the status answer's OperationOutcome).
    Column("error", Text, nullable=True),
    # How often the job was claimed: a worker that lost its claim (the job was
    # cancelled, or taken over after its heartbeat stopped) notices the change.
    Column("attempt", Integer, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    # Refreshed by the running worker; a running job without one for long is reclaimed.
    Column("heartbeat_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    # The manifest's transactionTime: the export holds the data as of this instant.
    Column("transaction_time", UtcDateTime, nullable=True),
)
# Workers look for the oldest queued (or stale running) job.
Index("ix_bulk_job_queue", bulk_job.c.status, bulk_job.c.created_at)

bulk_output = Table(
    "bulk_output",
    metadata,
    Column("job_id", String(64), ForeignKey("bulk_job.id", ondelete="CASCADE"), primary_key=True),
    # The file's name in its URL: [base]/_bulk/files/[job]/[name].
    Column("name", String(128), primary_key=True),
    # Its place in the manifest's output array.
    Column("position", Integer, nullable=False),
    Column("resource_type", String(64), nullable=False),
    # Lines (resources) in the file.
    Column("count", Integer, nullable=False),
    # The ndjson itself.
    Column("content", LargeBinary, nullable=False),
)

bulk_input = Table(
    "bulk_input",
    metadata,
    # The ndjson inputs of a `$import` job, in the kick-off's order.
    Column("job_id", String(64), ForeignKey("bulk_job.id", ondelete="CASCADE"), primary_key=True),
    Column("position", Integer, primary_key=True),
    # The input's `type`; NULL for an upload (any types).
    Column("resource_type", String(64), nullable=True),
    # The input's `url`; NULL for an upload.
    Column("url", Text, nullable=True),
    # An uploaded body, so that any worker process can run the job; NULL once
    # the job has ended (and for inputs fetched by URL).
    Column("content", LargeBinary, nullable=True),
    # What the import of the input did; NULL until it is done.
    Column("read", Integer, nullable=True),
    Column("created", Integer, nullable=True),
    Column("existing", Integer, nullable=True),
    Column("rejected", Integer, nullable=True),
    # Why the input could not be read at all (a failed fetch, a file over the limit).
    Column("failure", Text, nullable=True),
)
