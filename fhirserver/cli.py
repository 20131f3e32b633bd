"""The ``fhirserver`` command: serve, db upgrade, reindex (later: load, token, purge, sync, audit verify)."""

from __future__ import annotations

import os
import sys

import click

from fhirserver.settings import DEFAULT_DATABASE_URL, Settings

DATABASE_OPTION = click.option(
    "--database",
    "database_url",
    envvar="FHIRSERVER_DATABASE_URL",
    default=DEFAULT_DATABASE_URL,
    show_default=True,
    help="SQLAlchemy URL: sqlite:///file.db or postgresql://user@host/db (env FHIRSERVER_DATABASE_URL).",
)


@click.group()
@click.version_option(package_name="fhirserver")
def main() -> None:
    """fhirserver: a FHIR R4 health data server."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@DATABASE_OPTION
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Server processes."
)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Request threads per process.",
)
def serve(host: str, port: int, database_url: str, workers: int, threads: int) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir through the granian WSGI server."""
    from granian.constants import Interfaces
    from granian.server import Server

    settings = Settings.from_env(database_url=database_url)
    _prepare_schema(settings)
    # Worker processes build their app from the environment (fhirserver.wsgi).
    os.environ["FHIRSERVER_DATABASE_URL"] = settings.database_url
    click.echo(
        f"fhirserver: serving http://{host}:{port}{settings.base_path} on {_safe(settings.database_url)} with {workers} worker(s)"
    )
    Server(
        "fhirserver.wsgi:application",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        backlog=2048,
    ).serve()


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@DATABASE_OPTION
def db_upgrade(database_url: str) -> None:
    """Create or migrate the schema to the newest revision (Alembic)."""
    from fhirserver.storage.migrate import current_revision, upgrade
    from fhirserver.storage.session import make_engine

    engine = make_engine(database_url)
    upgrade(engine)
    click.echo(
        f"fhirserver: database {_safe(database_url)} is at revision {current_revision(engine)}"
    )
    engine.dispose()


@main.command()
@DATABASE_OPTION
@click.option("--type", "resource_type", default=None, help="Only resources of this type.")
def reindex(database_url: str, resource_type: str | None) -> None:
    """Rebuild the search indexes from the stored resources (after SearchParameter changes)."""
    from fhirserver.storage.reindex import reindex as run_reindex
    from fhirserver.storage.session import Database

    database = Database(database_url)
    try:
        base_url = Settings.from_env().public_base_url
        count = run_reindex(
            database,
            resource_type=resource_type,
            base_url=base_url,
            progress=lambda n: click.echo(f"\r{n} resources", nl=False),
        )
    finally:
        database.dispose()
    click.echo(f"\nfhirserver: reindexed {count} resources")


def _prepare_schema(settings: Settings) -> None:
    """Create the schema in an empty database; refuse to serve an outdated one."""
    from fhirserver.storage.migrate import current_revision, head_revision, upgrade
    from fhirserver.storage.session import make_engine

    engine = make_engine(settings.database_url)
    try:
        current = current_revision(engine)
        if current is None:
            upgrade(engine)
        elif current != head_revision():
            click.echo(
                f"fhirserver: the database schema is at revision {current}, this version needs {head_revision()}; "
                "run `fhirserver db upgrade` first.",
                err=True,
            )
            sys.exit(2)
    finally:
        engine.dispose()


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
