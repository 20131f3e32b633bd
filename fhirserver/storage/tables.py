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
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
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
