"""Bulk Data import: ndjson files into the store, by URL ("ping and pull") or uploaded.

After the Bulk Data import proposal
(https://github.com/smart-on-fhir/bulk-import/blob/master/import.md). The
kick-off (``operations/bulk_import.py``) checks the request and queues a job
with its inputs (``bulk_input`` rows: a URL each, or the uploaded body); a
worker runs it with :class:`Importer`:

- the inputs are loaded one after the other, those of the types others refer
  to by conditional reference (Organization, Location, Practitioner,
  PractitionerRole) first, through one :class:`~fhirserver.bulk.load.Loader`:
  the validation, reference resolution, batching and idempotency of
  ``fhirserver load`` (a resource already stored is left as it is);
- a URL is fetched only when its origin is listed in
  ``FHIRSERVER_IMPORT_ALLOWED_ORIGINS`` (checked at the kick-off, and again by
  the worker before the request and at every redirect): a server that fetches
  whatever URL a client names is an SSRF hole. The body is streamed into a
  temporary file (in memory up to a few MiB), cut off above
  ``FHIRSERVER_IMPORT_MAX_BYTES``, before a line of it is loaded, so a broken
  or oversized download loads nothing;
- each input's counts are recorded, and its rejected lines (and a failure to
  fetch it) become an error file of OperationOutcomes, one per line, stored
  like the files of an export and served at ``[base]/_bulk/files/[job]/[name]``.

An upload without ``Prefer: respond-async`` is loaded in the request itself
(:func:`load_upload`), inside the request's transaction.
"""

from __future__ import annotations

import http.client
import io
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

from sqlalchemy import Connection

from fhirserver.bulk import jobs
from fhirserver.bulk.load import DEFAULT_BATCH_SIZE, Loader, LoadReport, reference_tier
from fhirserver.errors import BadRequest, FhirError, Issue
from fhirserver.resources import jsonio
from fhirserver.resources.outcome import operation_outcome
from fhirserver.settings import Settings
from fhirserver.storage.session import Database

KIND = "import"
#: The ``inputFormat`` values accepted: Newline Delimited JSON.
INPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
ALLOWED_ORIGINS_SETTING = "FHIRSERVER_IMPORT_ALLOWED_ORIGINS"
#: Seconds a fetch may wait for the connection or for the next bytes.
FETCH_TIMEOUT = 60.0
#: How often a running import reports progress (its heartbeat; a cancel takes effect then).
PROGRESS_SECONDS = 1.0
#: A fetched file is kept in memory up to this size, in a temporary file above it.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
#: OperationOutcomes listed per input (in its error file) or per upload (in the answer).
MAX_LISTED_ERRORS = 100_000
MAX_LISTED_IN_RESPONSE = 1_000
#: Names an upload in locations and messages.
UPLOAD = "the uploaded ndjson"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class InputFailed(FhirError):
    """One input cannot be read at all (its import records why and the job goes on)."""

    status, code = 502, "exception"


@dataclass(frozen=True)
class ImportRequest:
    """What the kick-off accepted (stored with the job as JSON; the inputs are rows of their own)."""

    #: Base URL of the kick-off request: local absolute references resolve against it.
    base_url: str
    input_source: str | None = None
    input_format: str = "application/fhir+ndjson"
    mode: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "input_source": self.input_source,
            "input_format": self.input_format,
            "mode": self.mode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportRequest:
        return cls(
            base_url=data["base_url"],
            input_source=data.get("input_source"),
            input_format=data.get("input_format") or "application/fhir+ndjson",
            mode=data.get("mode"),
        )


# --------------------------------------------------------------------------
# Which URLs may be fetched
# --------------------------------------------------------------------------


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the default port filled in; None otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


def check_url(url: str, allowed_origins: Iterable[str]) -> None:
    """400 unless ``url`` is http(s) and its origin is one of ``allowed_origins``."""
    if urlsplit(url).scheme.lower() not in _DEFAULT_PORTS or origin_of(url) is None:
        raise BadRequest(
            f"Input url `{url}` is not an http or https URL: only those are imported "
            "(file: and other schemes never are)."
        )
    allowed = {origin_of(origin) for origin in allowed_origins} - {None}
    if not allowed:
        raise BadRequest(
            f"Import by URL is disabled on this server: {ALLOWED_ORIGINS_SETTING} lists no origin "
            "(upload the ndjson as the request body instead)."
        )
    if origin_of(url) not in allowed:
        raise BadRequest(
            f"Input url `{url}`: its origin is not one of those this server imports from "
            f"({ALLOWED_ORIGINS_SETTING})."
        )


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed origin (else the check at the start means nothing)."""

    def __init__(self, allowed_origins: tuple[str, ...]):
        super().__init__()
        self.allowed_origins = allowed_origins

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            check_url(newurl, self.allowed_origins)
        except BadRequest as refused:
            raise InputFailed(f"{req.full_url} redirects elsewhere: {refused.message}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# --------------------------------------------------------------------------
# The worker side
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Importer:
    """Runs an import job (the worker's runner for jobs of kind ``import``)."""

    allowed_origins: tuple[str, ...] = ()
    max_bytes: int = Settings.import_max_bytes
    timeout: float = FETCH_TIMEOUT
    batch_size: int = DEFAULT_BATCH_SIZE

    @classmethod
    def of(cls, settings: Settings) -> Importer:
        return cls(
            allowed_origins=settings.import_allowed_origins, max_bytes=settings.import_max_bytes
        )

    def __call__(self, database: Database, job: jobs.Job) -> None:
        request = ImportRequest.from_json(job.parameters)
        with database.transaction(write=False) as conn:
            inputs = jobs.inputs(conn, job.id)
        loader = Loader(database, base_url=request.base_url, batch_size=self.batch_size)
        progress = _Progress(database, job.lease, loader)
        # Reference targets first; otherwise in the client's order (a stable sort).
        ordered = sorted(inputs, key=lambda item: reference_tier(item.resource_type))
        for number, item in enumerate(ordered, 1):
            progress.stage = f"input {number} of {len(ordered)} ({item.resource_type or 'upload'})"
            failure = None
            try:
                with self._open(database, job.id, item, progress) as stream:
                    loader.load_ndjson(
                        progress.lines(stream),
                        item.url or UPLOAD,
                        resource_type=item.resource_type,
                    )
            except FhirError as error:  # InputFailed, or a URL no longer allowed (BadRequest)
                failure = error.message
            loader.flush()
            report = loader.take_report()
            progress.done += report.read
            done = jobs.Input(
                position=item.position,
                resource_type=item.resource_type,
                url=item.url,
                read=report.read,
                created=report.created,
                existing=report.existing,
                rejected=report.rejected,
                failure=failure,
            )
            jobs.finish_input(
                database, job.lease, done, _error_file(item, report, failure), progress.text()
            )

    @contextmanager
    def _open(
        self, database: Database, job_id: str, item: jobs.Input, progress: _Progress
    ) -> Iterator[IO[bytes]]:
        if item.url is None:
            with database.transaction(write=False) as conn:
                content = jobs.input_content(conn, job_id, item.position)
            if content is None:
                raise InputFailed("The uploaded ndjson is no longer stored.")
            yield io.BytesIO(content)
            return
        with self._download(item.url, progress) as spool:
            yield spool

    @contextmanager
    def _download(self, url: str, progress: _Progress) -> Iterator[IO[bytes]]:
        """The body of ``url`` in a temporary file, whole and under the limit (InputFailed otherwise)."""
        check_url(url, self.allowed_origins)
        # No proxies from the environment (settings.py is the only place that reads it).
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _CheckedRedirects(self.allowed_origins)
        )
        request = urllib.request.Request(
            url, headers={"Accept": "application/fhir+ndjson", "User-Agent": "fhirserver-import"}
        )
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            try:
                with opener.open(request, timeout=self.timeout) as response:
                    declared = response.headers.get("Content-Length", "")
                    if declared.isdigit() and int(declared) > self.max_bytes:
                        raise InputFailed(self._too_large(url))
                    size = 0
                    while chunk := response.read(64 * 1024):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise InputFailed(self._too_large(url))
                        spool.write(chunk)
                        progress.beat()
            except urllib.error.HTTPError as error:
                raise InputFailed(f"GET {url} answered {error.code} {error.reason}.") from None
            except urllib.error.URLError as error:
                raise InputFailed(f"{url} could not be fetched: {error.reason}.") from None
            except (OSError, http.client.HTTPException, ValueError) as error:
                raise InputFailed(
                    f"{url} could not be fetched: {error or type(error).__name__}."
                ) from None
            spool.seek(0)
            yield spool

    def _too_large(self, url: str) -> str:
        return (
            f"{url} is larger than this server imports from a URL ({self.max_bytes} bytes, "
            "FHIRSERVER_IMPORT_MAX_BYTES)."
        )


class _Progress:
    """The job's X-Progress and heartbeat, at most every PROGRESS_SECONDS (raises jobs.LostJob)."""

    def __init__(self, database: Database, lease: jobs.Lease, loader: Loader):
        self.database, self.lease, self.loader = database, lease, loader
        self.stage = ""
        #: Resources read from the inputs done.
        self.done = 0
        self.reported = time.monotonic()

    def text(self) -> str:
        return f"{self.done + self.loader.report.read} resources read; importing {self.stage}."

    def beat(self) -> None:
        if time.monotonic() - self.reported >= PROGRESS_SECONDS:
            jobs.report_progress(self.database, self.lease, self.text())
            self.reported = time.monotonic()

    def lines(self, stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
        for numbered in enumerate(stream, 1):
            self.beat()
            yield numbered


def error_file_name(position: int) -> str:
    return f"input-{position}-errors.ndjson"


def _error_file(
    item: jobs.Input, report: LoadReport, failure: str | None
) -> tuple[jobs.Output, bytes] | None:
    """The OperationOutcomes of an input's failure and rejected lines, one per ndjson line."""
    issues = []
    if failure is not None:
        issues.append(Issue(code="exception", diagnostics=failure))
    source = item.url or UPLOAD
    issues += [
        _rejection_issue(r.location, r.reason, source)
        for r in report.rejections[:MAX_LISTED_ERRORS]
    ]
    if report.rejected > MAX_LISTED_ERRORS:
        issues.append(_more_issue(report.rejected - MAX_LISTED_ERRORS))
    if not issues:
        return None
    lines = [jsonio.dumps(operation_outcome([issue])) for issue in issues]
    output = jobs.Output(
        name=error_file_name(item.position),
        position=item.position,
        resource_type="OperationOutcome",
        count=len(lines),
    )
    return output, b"\n".join(lines) + b"\n"


def _rejection_issue(location: str, reason: str, source: str) -> Issue:
    # The loader's location is `<source>:<line>`.
    line = location.rpartition(":")[2]
    return Issue(code="invalid", diagnostics=f"Line {line} of {source}: {reason}")


def _more_issue(count: int) -> Issue:
    return Issue(code="too-costly", diagnostics=f"{count} more lines were rejected (not listed).")


# --------------------------------------------------------------------------
# An upload loaded in the request
# --------------------------------------------------------------------------


class _InTransaction:
    """The request's transaction as a Loader's database: a savepoint per batch, so that a
    batch the database refuses is rolled back alone and retried resource by resource."""

    def __init__(self, conn: Connection):
        self.conn = conn

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Connection]:
        if not write:
            yield self.conn
            return
        with self.conn.begin_nested():
            yield self.conn


def load_upload(conn: Connection, content: bytes, base_url: str) -> LoadReport:
    """Load an uploaded ndjson body inside the request's transaction."""
    loader = Loader(_InTransaction(conn), base_url=base_url)
    loader.load_ndjson(enumerate(io.BytesIO(content), 1), UPLOAD)
    loader.flush()
    return loader.take_report()


def upload_outcome(report: LoadReport) -> dict:
    """The answer to a synchronous upload: the counts, then each rejected line."""
    summary = Issue(
        code="informational",
        severity="information",
        diagnostics=(
            f"{report.read} resources read: {report.created} created, "
            f"{report.existing} already present, {report.rejected} rejected."
        ),
    )
    issues = [summary] + [
        _rejection_issue(r.location, r.reason, UPLOAD)
        for r in report.rejections[:MAX_LISTED_IN_RESPONSE]
    ]
    if report.rejected > MAX_LISTED_IN_RESPONSE:
        issues.append(_more_issue(report.rejected - MAX_LISTED_IN_RESPONSE))
    return operation_outcome(issues)
