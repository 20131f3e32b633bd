"""The bulk data worker: claims queued jobs from the database and runs them.

Any server process may run one (``fhirserver serve`` starts one per process
unless ``FHIRSERVER_BULK_WORKER=0``), and so may ``fhirserver worker``: jobs
are claimed in the database (fhirserver/bulk/jobs.py), so however many run,
each job is run by one of them at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from fhirserver.bulk import export, import_, jobs
from fhirserver.errors import FhirError
from fhirserver.settings import Settings
from fhirserver.storage.session import Database

log = logging.getLogger(__name__)

#: Runs one claimed job to its end (raises jobs.LostJob when it was cancelled).
Runner = Callable[[Database, jobs.Job], None]
#: How long an idle worker waits before it looks for work again.
IDLE_SECONDS = 2.0


def default_runners(settings: Settings | None = None) -> dict[str, Runner]:
    """Job kind -> its runner. ``settings`` say which URLs an import may fetch (none by default)."""
    return {
        export.KIND: export.Exporter(),
        import_.KIND: import_.Importer.of(settings or Settings()),
    }


def run_queued(
    database: Database,
    runners: Mapping[str, Runner] | None = None,
    *,
    settings: Settings | None = None,
) -> int:
    """Claim and run jobs until none is queued; the number of jobs run."""
    runners = runners if runners is not None else default_runners(settings)
    kinds = tuple(runners)
    count = 0
    while (job := jobs.claim(database, kinds)) is not None:
        run_job(database, job, runners[job.kind])
        count += 1
    return count


def run_job(database: Database, job: jobs.Job, runner: Runner) -> None:
    """Run a claimed job and record how it ended."""
    try:
        runner(database, job)
        jobs.complete(database, job.lease)
    except jobs.LostJob:
        log.info("Bulk data job %s was cancelled or taken over; stopped.", job.id)
    except FhirError as error:
        jobs.fail(database, job.lease, error.message)
    except Exception:  # noqa: BLE001 - the job fails; the worker goes on with the next
        log.exception("Bulk data job %s failed", job.id)
        jobs.fail(database, job.lease, "The job failed on a server error; the error was logged.")


def serve_forever(
    database: Database,
    stop: threading.Event,
    *,
    idle_seconds: float = IDLE_SECONDS,
    settings: Settings | None = None,
) -> None:
    """Run queued jobs as they come, until ``stop`` is set."""
    runners = default_runners(settings)
    while not stop.is_set():
        try:
            run_queued(database, runners)
        except Exception:  # noqa: BLE001 - e.g. the database is briefly away: try again later
            log.exception("The bulk data worker could not look for jobs")
        stop.wait(idle_seconds)


def start_background(settings: Settings) -> threading.Event:
    """A daemon thread running :func:`serve_forever` in this process; set the event to stop it."""
    database = Database(settings.database_url, pool_size=2)
    stop = threading.Event()
    threading.Thread(
        target=serve_forever,
        args=(database, stop),
        kwargs={"settings": settings},
        name="fhirserver-bulk-worker",
        daemon=True,
    ).start()
    return stop
