"""Engines and transactions for SQLite (embedded default) and PostgreSQL.

The request owns its transaction: ``with database.transaction(write=...) as conn``.
Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so that two writers
queue on the database lock instead of failing when a reader upgrades; on
PostgreSQL rows are locked with ``SELECT ... FOR UPDATE`` by the repository.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=3600,
        # psycopg prepares a statement on the server after 5 executions, and
        # PostgreSQL then switches to a generic plan, made without the values.
        # For search that is a disaster (a search for one patient's code took
        # 0.9 s instead of 4 ms at 1M Observations, docs/PERFORMANCE.md):
        # plan every execution with its values; statements stay prepared.
        connect_args={"options": "-c plan_cache_mode=force_custom_plan"},
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Take over transaction control from the sqlite3 module (it would
        # otherwise BEGIN lazily and never IMMEDIATE).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("fhir_write", False) else "BEGIN")


class Database:
    """One engine per server process; holds no state another process needs."""

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = normalize_url(url)
        self.engine = make_engine(url, pool_size=pool_size)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Connection]:
        """One database transaction for a write: commit on success, roll back on any error.

        Reads run in autocommit instead: under PostgreSQL's READ COMMITTED each
        statement takes its own snapshot anyway, so BEGIN/COMMIT around a read
        only costs two round trips (measured: a third of a read's database time).
        """
        with self.engine.connect() as conn:
            if not write:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
                return
            conn = conn.execution_options(fhir_write=True)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        self.engine.dispose()
