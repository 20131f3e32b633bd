"""Test fixtures: the real database (SQLite file or a fresh PostgreSQL database) and the real HTTP stack.

FHIRSERVER_TEST_BACKEND=sqlite|postgres picks the database; for postgres,
FHIRSERVER_TEST_POSTGRES_URL names the server, and every test run (every xdist
worker) creates its own database there and drops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from fhirserver import create_app
from fhirserver.settings import Settings
from fhirserver.storage.migrate import upgrade
from fhirserver.storage.session import make_engine, normalize_url
from fhirserver.storage.tables import metadata

BACKEND = os.environ.get("FHIRSERVER_TEST_BACKEND", "sqlite")
#: The shared, read-only FHIR data beside the repository (see ../shared/fhir-data/README.md).
FHIR_DATA = Path(__file__).resolve().parents[2] / "shared" / "fhir-data"


def pytest_report_header(config):
    return f"fhirserver test backend: {BACKEND}"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'fhirserver.db'}"
        return
    if BACKEND != "postgres":
        raise pytest.UsageError(
            f"FHIRSERVER_TEST_BACKEND must be sqlite or postgres, not {BACKEND!r}"
        )
    server = os.environ.get("FHIRSERVER_TEST_POSTGRES_URL")
    if not server:
        raise pytest.UsageError(
            "FHIRSERVER_TEST_BACKEND=postgres needs FHIRSERVER_TEST_POSTGRES_URL"
        )
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"fhirserver_test_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(normalize_url(server)).set(drivername="postgresql")
    dsn = admin_url.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def settings(database_url) -> Settings:
    engine = make_engine(database_url)
    upgrade(engine)
    engine.dispose()
    return Settings(database_url=database_url)


@pytest.fixture(scope="session")
def app(settings):
    application = create_app(settings)
    yield application
    application.extensions["fhirserver"].database.dispose()


@pytest.fixture
def database(app):
    """The app's Database, emptied before each test."""
    database = app.extensions["fhirserver"].database
    with database.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DELETE FROM {table.name}"))
    return database


@pytest.fixture
def client(app, database):
    return app.test_client()


@pytest.fixture
def fhir_data() -> Path:
    if not FHIR_DATA.is_dir():
        pytest.fail(f"The shared FHIR data is missing at {FHIR_DATA}")
    return FHIR_DATA
