"""Writing and deleting search index rows, fast on both databases.

A Patient has ~45 index rows over several tables. On PostgreSQL each table's
rows go in ONE statement (``INSERT ... SELECT FROM unnest(arrays)``), and the
rows of a resource are deleted from all tables in one statement (data-modifying
CTEs): a handful of round trips instead of one per row (measured: per-row
inserts were a third of the cost of a create). SQLite runs in-process, where
``executemany`` is already cheap. Bulk loads write theirs with ``COPY``
(:func:`copy_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from operator import itemgetter

import psycopg
from sqlalchemy import BigInteger, Connection, Integer, Numeric, delete, insert
from sqlalchemy.exc import DBAPIError

from fhirserver.storage.tables import SEARCH_TABLES, UtcDateTime


def _array_type(column) -> str:
    column_type = column.type
    if isinstance(column_type, BigInteger | Integer):
        return "bigint[]"
    if isinstance(column_type, Numeric):
        return "numeric[]"
    if isinstance(column_type, UtcDateTime):
        return "timestamptz[]"
    return "text[]"


@cache
def _unnest_insert(search_type: str) -> tuple[str, tuple[str, ...]]:
    table = SEARCH_TABLES[search_type]
    names = tuple(column.name for column in table.columns)
    arrays = ", ".join(f"%({name})s::{_array_type(table.c[name])}" for name in names)
    return f"INSERT INTO {table.name} ({', '.join(names)}) SELECT * FROM unnest({arrays})", names


@cache
def _delete_all_sql() -> str:
    tables = [table.name for table in SEARCH_TABLES.values()]
    ctes = ", ".join(
        f"d{i} AS (DELETE FROM {name} WHERE resource_pk = ANY(%(pks)s))"
        for i, name in enumerate(tables[:-1])
    )
    return f"WITH {ctes} DELETE FROM {tables[-1]} WHERE resource_pk = ANY(%(pks)s)"


def insert_rows(conn: Connection, rows_by_type: dict[str, list[dict]]) -> None:
    """Insert index rows (each carrying resource_pk, resource_type, param and its type's columns)."""
    postgres = conn.dialect.name == "postgresql"
    for search_type, rows in rows_by_type.items():
        if not rows:
            continue
        if postgres:
            sql, names = _unnest_insert(search_type)
            conn.exec_driver_sql(sql, {name: [row.get(name) for row in rows] for name in names})
        else:
            conn.execute(insert(SEARCH_TABLES[search_type]), rows)


@cache
def _copy_sql(search_type: str) -> tuple[str, tuple[str, ...]]:
    table = SEARCH_TABLES[search_type]
    names = tuple(column.name for column in table.columns)
    return f"COPY {table.name} ({', '.join(names)}) FROM STDIN", names


def copy_rows(conn: Connection, rows_by_type: dict[str, list[dict]]) -> None:
    """:func:`insert_rows` for PostgreSQL through ``COPY``: the bulk load's path.

    psycopg formats each COPY row in C, where the ``unnest`` INSERT has it build
    one array per column in Python (the Synthea load has ~20 index rows per
    resource; see storage/bulk.py for what the bulk path saved). Two round
    trips per table instead of one, so single writes keep the INSERT.
    """
    # The driver's own connection, in the transaction (or savepoint) ``conn`` is in.
    with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        for search_type, rows in rows_by_type.items():
            if not rows:
                continue
            sql, names = _copy_sql(search_type)
            values = itemgetter(*names)  # in C, where a dict.get per column cost ~3 us a row
            try:
                with cursor.copy(sql) as copy:
                    write_row = copy.write_row
                    for row in rows:
                        try:
                            write_row(values(row))
                        except KeyError:  # a row without some nullable column
                            write_row([row.get(name) for name in names])
            except psycopg.Error as error:
                # Wrapped as SQLAlchemy wraps what it executes: callers tell a
                # refused write by that (the bulk load then writes the batch
                # one resource at a time to find the one refused).
                raise DBAPIError.instance(
                    sql, None, error, psycopg.Error, dialect=conn.dialect
                ) from error


def delete_rows(conn: Connection, pks: Iterable[int]) -> None:
    """Delete every index row of the given resources."""
    pks = list(pks)
    if not pks:
        return
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(_delete_all_sql(), {"pks": pks})
        return
    for table in SEARCH_TABLES.values():
        conn.execute(delete(table).where(table.c.resource_pk.in_(pks)))
