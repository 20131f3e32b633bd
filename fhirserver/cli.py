"""The ``fhirserver`` command: serve, db upgrade, reindex, load (later: token, purge, sync, audit verify)."""

from __future__ import annotations

import os
import pathlib
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


#: Rejections listed one by one; the rest are counted.
MAX_LISTED_REJECTIONS = 200


@main.command()
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=pathlib.Path)
)
@DATABASE_OPTION
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Resources per database transaction.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes reading and writing files (each with its own database connection).",
)
def load(paths: tuple[pathlib.Path, ...], database_url: str, batch_size: int, workers: int) -> None:
    """Load ndjson files (.ndjson, .ndjson.gz), transaction/batch Bundles or single
    resources (.json) and folders of them; existing resources are left unchanged.

    Exit status 1 when any resource was rejected (each is listed with file:line).
    """
    from fhirserver.bulk.load import LoadError, find_sources, run

    settings = Settings.from_env(database_url=database_url)
    _prepare_schema(settings)
    try:
        plan = find_sources(paths)
    except LoadError as error:
        raise click.UsageError(str(error)) from None
    with click.progressbar(length=plan.size, label="Loading", file=sys.stderr) as bar:
        report = run(
            settings.database_url,
            plan,
            base_url=settings.public_base_url,
            batch_size=batch_size,
            workers=workers,
            progress=bar.update,
        )
    if report.workers < workers:
        click.echo("fhirserver: SQLite takes one writer at a time: loaded in one process", err=True)
    for name in report.skipped:
        click.echo(f"skipped {name}: it holds no FHIR resources", err=True)
    for rejection in report.rejections[:MAX_LISTED_REJECTIONS]:
        click.echo(f"rejected {rejection}", err=True)
    if report.rejected > MAX_LISTED_REJECTIONS:
        click.echo(f"... and {report.rejected - MAX_LISTED_REJECTIONS} more rejected", err=True)
    click.echo(f"fhirserver: loaded {report.summary()}")
    sys.exit(1 if report.rejected else 0)


@main.command()
@DATABASE_OPTION
@click.option("--once", is_flag=True, help="Run the queued jobs, then exit (for tests and cron).")
def worker(database_url: str, once: bool) -> None:
    """Run bulk data jobs ($export, $import) from the database's queue.

    `serve` already runs a worker in every process unless FHIRSERVER_BULK_WORKER=0;
    this one can run anywhere else, any number of times: jobs are claimed in the database.
    """
    import threading

    from fhirserver.bulk.worker import run_queued, serve_forever
    from fhirserver.storage.session import Database

    settings = Settings.from_env(database_url=database_url)
    _prepare_schema(settings)
    database = Database(settings.database_url, pool_size=2)
    try:
        if once:
            click.echo(
                f"fhirserver: ran {run_queued(database, settings=settings)} bulk data job(s)"
            )
            return
        click.echo(f"fhirserver: bulk data worker on {_safe(settings.database_url)}")
        try:
            serve_forever(database, threading.Event(), settings=settings)
        except KeyboardInterrupt:
            pass
    finally:
        database.dispose()


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
