"""Bulk data jobs in the database: enqueue, claim, progress, outputs, complete, fail, cancel
(and the inputs of import jobs).

The FHIR Asynchronous Bulk Interaction Pattern
(http://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-kick-off-request): a
kick-off request queues a job and answers 202 with a status URL; a worker in
any server process claims it and stores its files in ``bulk_output``; any
process answers the status and serves the files. No process holds state that
another one needs.

Claiming is safe with any number of workers. On PostgreSQL the claim reads the
oldest queued job with ``SELECT ... FOR UPDATE SKIP LOCKED``: a second claimant
skips a job the first one is claiming instead of waiting for it, and takes the
next. On SQLite the claim runs in a write transaction (``BEGIN IMMEDIATE``),
which serializes claimants.

A worker holds its job by a :class:`Lease` (job id + attempt number). Every
write it makes (progress, a file, completion) is conditional on the lease in
the same transaction, so a worker whose job was cancelled, or reclaimed after
its heartbeat stopped for :data:`STALE_AFTER` (its process died), learns it
(:class:`LostJob`) and can never write into the job again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from fhirserver.resources import jsonio
from fhirserver.storage.session import Database
from fhirserver.storage.tables import bulk_input, bulk_job, bulk_output, utcnow

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = (
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
)
#: A running job whose worker has not reported for this long is claimed again.
STALE_AFTER = timedelta(minutes=10)


class LostJob(Exception):
    """The job was cancelled, or claimed again by another worker: stop working on it."""


@dataclass(frozen=True)
class Lease:
    job_id: str
    attempt: int


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    request_url: str
    parameters: dict[str, Any]
    progress: str | None
    error: str | None
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    transaction_time: datetime | None

    @property
    def lease(self) -> Lease:
        return Lease(self.id, self.attempt)


@dataclass(frozen=True)
class Output:
    """One file of a job: ``[base]/_bulk/files/[job]/[name]``."""

    name: str
    position: int
    resource_type: str
    count: int


@dataclass(frozen=True)
class Input:
    """One ndjson input of an import job: a URL, or an uploaded body (``url`` None)."""

    position: int
    resource_type: str | None
    url: str | None
    #: What its import did; None until it is done.
    read: int | None = None
    created: int | None = None
    existing: int | None = None
    rejected: int | None = None
    #: Why it could not be read at all.
    failure: str | None = None


def connection_of(repository: object) -> Connection:
    """The database connection of the request's repository (its transaction).

    Jobs are not resources, so the Repository protocol has no place for them;
    the SQL repository's connection is the request's transaction.
    """
    conn = getattr(repository, "conn", None)
    if not isinstance(conn, Connection):
        raise TypeError("Bulk data jobs need a repository over the SQL database.")
    return conn


def _job(row: Any) -> Job:
    return Job(
        id=row.id,
        kind=row.kind,
        status=row.status,
        request_url=row.request_url,
        parameters=jsonio.loads(row.parameters),
        progress=row.progress,
        error=row.error,
        attempt=row.attempt,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        transaction_time=row.transaction_time,
    )


def enqueue(conn: Connection, kind: str, request_url: str, parameters: dict[str, Any]) -> Job:
    """A new queued job (committed with the caller's transaction)."""
    job_id = str(uuid.uuid4())
    conn.execute(
        insert(bulk_job).values(
            id=job_id,
            kind=kind,
            status=QUEUED,
            request_url=request_url,
            parameters=jsonio.dumps(parameters),
            progress="Queued.",
            attempt=0,
            created_at=utcnow(),
        )
    )
    found = find(conn, job_id)
    assert found is not None
    return found


def find(conn: Connection, job_id: str) -> Job | None:
    row = conn.execute(select(bulk_job).where(bulk_job.c.id == job_id)).first()
    return None if row is None else _job(row)


def claim(database: Database, kinds: tuple[str, ...], *, now: datetime | None = None) -> Job | None:
    """Claim the oldest job of ``kinds`` that is queued (or stale), in its own transaction."""
    with database.transaction(write=True) as conn:
        return claim_next(conn, kinds, now=now)


def claim_next(
    conn: Connection, kinds: tuple[str, ...], *, now: datetime | None = None
) -> Job | None:
    """Claim inside the caller's write transaction: the job is the caller's once it commits."""
    now = now or utcnow()
    claimable = select(bulk_job.c.id).where(
        bulk_job.c.kind.in_(kinds),
        or_(
            bulk_job.c.status == QUEUED,
            and_(bulk_job.c.status == RUNNING, bulk_job.c.heartbeat_at < now - STALE_AFTER),
        ),
    )
    claimable = claimable.order_by(bulk_job.c.created_at, bulk_job.c.id).limit(1)
    if conn.dialect.name == "postgresql":
        claimable = claimable.with_for_update(skip_locked=True)
    job_id = conn.execute(claimable).scalar()
    if job_id is None:
        return None
    conn.execute(
        update(bulk_job)
        .where(bulk_job.c.id == job_id)
        .values(
            status=RUNNING,
            attempt=bulk_job.c.attempt + 1,
            started_at=now,
            heartbeat_at=now,
            # The data is exported as of the moment the work starts, at the
            # precision of meta.lastUpdated (milliseconds), which _since compares with.
            transaction_time=now.replace(microsecond=now.microsecond // 1000 * 1000),
            progress="Started.",
            error=None,
        )
    )
    # Files of an earlier attempt whose worker died are written again.
    conn.execute(delete(bulk_output).where(bulk_output.c.job_id == job_id))
    # ...and the inputs of an import are imported again (idempotent: nothing twice).
    conn.execute(update(bulk_input).where(bulk_input.c.job_id == job_id).values(**_NOT_DONE))
    return find(conn, job_id)


def _hold(conn: Connection, lease: Lease, **values: Any) -> None:
    """Update the job under the lease (the row stays locked to the end of the transaction)."""
    result = conn.execute(
        update(bulk_job)
        .where(
            bulk_job.c.id == lease.job_id,
            bulk_job.c.status == RUNNING,
            bulk_job.c.attempt == lease.attempt,
        )
        .values(heartbeat_at=utcnow(), **values)
    )
    if result.rowcount != 1:
        raise LostJob(f"Bulk data job {lease.job_id} is no longer held by this worker.")


def report_progress(database: Database, lease: Lease, progress: str) -> None:
    """Record progress (the X-Progress header) and the heartbeat; LostJob when cancelled."""
    with database.transaction(write=True) as conn:
        _hold(conn, lease, progress=progress)


def add_output(
    database: Database, lease: Lease, output: Output, content: bytes, progress: str
) -> None:
    """Store one finished file of the job; LostJob (and nothing stored) when cancelled."""
    with database.transaction(write=True) as conn:
        _hold(conn, lease, progress=progress)
        _insert_output(conn, lease.job_id, output, content)


def complete(database: Database, lease: Lease) -> None:
    with database.transaction(write=True) as conn:
        _hold(conn, lease, status=COMPLETED, progress=None, finished_at=utcnow())
        _drop_uploads(conn, lease.job_id)


def fail(database: Database, lease: Lease, error: str) -> None:
    """Mark the job failed; nothing happens when the worker no longer holds it."""
    try:
        with database.transaction(write=True) as conn:
            _hold(conn, lease, status=FAILED, progress=None, error=error, finished_at=utcnow())
            conn.execute(delete(bulk_output).where(bulk_output.c.job_id == lease.job_id))
            _drop_uploads(conn, lease.job_id)
    except LostJob:
        pass


def cancel(conn: Connection, job_id: str) -> bool:
    """Cancel a job and delete its files (http://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-delete-request).

    False when there is no such job or it was cancelled before.
    """
    result = conn.execute(
        update(bulk_job)
        .where(bulk_job.c.id == job_id, bulk_job.c.status != CANCELLED)
        .values(status=CANCELLED, progress=None, finished_at=utcnow())
    )
    if result.rowcount != 1:
        return False
    conn.execute(delete(bulk_output).where(bulk_output.c.job_id == job_id))
    conn.execute(delete(bulk_input).where(bulk_input.c.job_id == job_id))
    return True


def outputs(conn: Connection, job_id: str) -> list[Output]:
    rows = conn.execute(
        select(
            bulk_output.c.name,
            bulk_output.c.position,
            bulk_output.c.resource_type,
            bulk_output.c.count,
        )
        .where(bulk_output.c.job_id == job_id)
        .order_by(bulk_output.c.position)
    )
    # By position: Row.count is the tuple method.
    return [Output(*row) for row in rows]


def output_content(conn: Connection, job_id: str, name: str) -> bytes | None:
    return conn.execute(
        select(bulk_output.c.content).where(
            bulk_output.c.job_id == job_id, bulk_output.c.name == name
        )
    ).scalar()


# -- inputs of import jobs ---------------------------------------------------------

_NOT_DONE: dict[str, Any] = dict.fromkeys(
    ("read", "created", "existing", "rejected", "failure"), None
)


def add_inputs(
    conn: Connection, job_id: str, inputs: list[tuple[str | None, str | None, bytes | None]]
) -> None:
    """The job's inputs as (type, url, uploaded content), numbered from 1 in this order."""
    conn.execute(
        insert(bulk_input),
        [
            {
                "job_id": job_id,
                "position": position,
                "resource_type": resource_type,
                "url": url,
                "content": content,
            }
            for position, (resource_type, url, content) in enumerate(inputs, 1)
        ],
    )


def inputs(conn: Connection, job_id: str) -> list[Input]:
    c = bulk_input.c
    rows = conn.execute(
        select(
            c.position,
            c.resource_type,
            c.url,
            c.read,
            c.created,
            c.existing,
            c.rejected,
            c.failure,
        )
        .where(c.job_id == job_id)
        .order_by(c.position)
    )
    return [Input(*row) for row in rows]


def input_content(conn: Connection, job_id: str, position: int) -> bytes | None:
    return conn.execute(
        select(bulk_input.c.content).where(
            bulk_input.c.job_id == job_id, bulk_input.c.position == position
        )
    ).scalar()


def finish_input(
    database: Database,
    lease: Lease,
    done: Input,
    error_file: tuple[Output, bytes] | None,
    progress: str,
) -> None:
    """Record what the import of one input did, with its error file; LostJob when cancelled."""
    with database.transaction(write=True) as conn:
        _hold(conn, lease, progress=progress)
        conn.execute(
            update(bulk_input)
            .where(bulk_input.c.job_id == lease.job_id, bulk_input.c.position == done.position)
            .values(
                read=done.read,
                created=done.created,
                existing=done.existing,
                rejected=done.rejected,
                failure=done.failure,
            )
        )
        if error_file is not None:
            output, content = error_file
            _insert_output(conn, lease.job_id, output, content)


def _insert_output(conn: Connection, job_id: str, output: Output, content: bytes) -> None:
    conn.execute(
        insert(bulk_output).values(
            job_id=job_id,
            name=output.name,
            position=output.position,
            resource_type=output.resource_type,
            count=output.count,
            content=content,
        )
    )


def _drop_uploads(conn: Connection, job_id: str) -> None:
    """An ended job needs its uploaded bodies no more (they may be large)."""
    conn.execute(
        update(bulk_input)
        .where(bulk_input.c.job_id == job_id, bulk_input.c.content.is_not(None))
        .values(content=None)
    )
