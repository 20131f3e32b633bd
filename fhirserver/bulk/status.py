"""Status, cancel and file requests of bulk data export and import jobs — HTTP-free handlers.

http://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-status-request:

- ``GET [base]/_bulk/export/[job]``: 202 with ``X-Progress`` while queued or
  running; 200 with the JSON manifest when complete; 500 with an
  OperationOutcome when failed; 404 when unknown or cancelled.
- ``DELETE`` on the same URL cancels the job and deletes its files (202);
  later requests answer 404.
- ``GET [base]/_bulk/files/[job]/[file]``: one ndjson file.

The same for an import (after https://github.com/smart-on-fhir/bulk-import/blob/master/import.md):
``GET`` / ``DELETE [base]/_bulk/import/[job]``; its manifest lists per input
the resources imported (``output``) and the file of OperationOutcomes of its
rejected lines (``error``), served like an export's files.

They run through the same pipeline as every interaction (http/dispatch.py), so
access control and audit apply to them as to any read.
"""

from __future__ import annotations

from fhirserver.bulk import export, import_, jobs
from fhirserver.errors import Issue, NotFound
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources import jsonio
from fhirserver.resources.meta import format_instant
from fhirserver.resources.outcome import operation_outcome
from fhirserver.storage.repository import Repository

#: Seconds a client is asked to wait before it polls again.
RETRY_AFTER = "2"


def status_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/_bulk/export/{job_id}"


def import_status_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/_bulk/import/{job_id}"


def file_url(base_url: str, job_id: str, name: str) -> str:
    return f"{base_url}/_bulk/files/{job_id}/{name}"


def _find_job(repository: Repository, job_id: str, *kinds: str) -> jobs.Job:
    job = jobs.find(jobs.connection_of(repository), job_id)
    if job is None or job.kind not in kinds or job.status == jobs.CANCELLED:
        raise NotFound(f"Bulk data {' or '.join(kinds)} job `{job_id}` was not found.")
    return job


def _export_job(repository: Repository, job_id: str) -> jobs.Job:
    return _find_job(repository, job_id, export.KIND)


def handle_status(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.id is not None
    return _status(request, repository, _export_job(repository, request.id))


def handle_import_status(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.id is not None
    return _status(request, repository, _find_job(repository, request.id, import_.KIND))


def _status(request: FhirRequest, repository: Repository, job: jobs.Job) -> FhirResponse:
    if job.status in (jobs.QUEUED, jobs.RUNNING):
        return FhirResponse(
            status=202,
            headers={"X-Progress": job.progress or job.status, "Retry-After": RETRY_AFTER},
        )
    if job.status == jobs.FAILED:
        issue = Issue(code="exception", diagnostics=job.error or f"The {job.kind} failed.")
        return FhirResponse(status=500, resource=operation_outcome([issue]))
    assert job.transaction_time is not None
    if job.kind == import_.KIND:
        manifest = _import_manifest(request, repository, job)
        return FhirResponse(
            status=200, body=jsonio.dumps(manifest), content_type="application/json"
        )
    files = jobs.outputs(jobs.connection_of(repository), job.id)
    manifest = {
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request_url,
        # Every file is served through the API, under the same access rules.
        "requiresAccessToken": True,
        "output": [
            {
                "type": output.resource_type,
                "url": file_url(request.base_url, job.id, output.name),
                "count": output.count,
            }
            for output in files
        ],
        "error": [],
    }
    return FhirResponse(status=200, body=jsonio.dumps(manifest), content_type="application/json")


def _import_manifest(request: FhirRequest, repository: Repository, job: jobs.Job) -> dict:
    """One ``output`` entry per input (``count``: resources imported or already present) and
    one ``error`` entry per input with rejected lines or a failure (its OperationOutcomes)."""
    assert job.transaction_time is not None
    conn = jobs.connection_of(repository)
    files = {output.name: output for output in jobs.outputs(conn, job.id)}
    output, error = [], []
    totals = {"read": 0, "created": 0, "alreadyPresent": 0, "rejected": 0}
    for item in jobs.inputs(conn, job.id):
        source = {"inputUrl": item.url} if item.url else {}
        created, existing = item.created or 0, item.existing or 0
        output.append(
            {"type": item.resource_type or "Resource", **source, "count": created + existing}
        )
        totals["read"] += item.read or 0
        totals["created"] += created
        totals["alreadyPresent"] += existing
        totals["rejected"] += item.rejected or 0
        errors = files.get(import_.error_file_name(item.position))
        if errors is not None:
            error.append(
                {
                    "type": "OperationOutcome",
                    **source,
                    "url": file_url(request.base_url, job.id, errors.name),
                    "count": errors.count,
                }
            )
    return {
        "transactionTime": format_instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": output,
        "error": error,
        # The proposal reserves `extension` for a server's own information.
        "extension": totals,
    }


def handle_cancel(request: FhirRequest, repository: Repository) -> FhirResponse:
    """http://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-delete-request"""
    assert request.id is not None
    _export_job(repository, request.id)
    return _cancel(repository, request.id, "export")


def handle_import_cancel(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.id is not None
    _find_job(repository, request.id, import_.KIND)
    return _cancel(repository, request.id, "import")


def _cancel(repository: Repository, job_id: str, what: str) -> FhirResponse:
    if not jobs.cancel(jobs.connection_of(repository), job_id):
        raise NotFound(f"Bulk data {what} job `{job_id}` was not found.")
    issue = Issue(
        code="informational",
        severity="information",
        diagnostics=f"Bulk data {what} job `{job_id}` was cancelled; its files are deleted.",
    )
    return FhirResponse(status=202, resource=operation_outcome([issue]))


def handle_file(request: FhirRequest, repository: Repository) -> FhirResponse:
    """http://hl7.org/fhir/uv/bulkdata/export.html#file-request — the route passes ``[job]/[file]`` as the id."""
    assert request.id is not None
    job_id, _, name = request.id.partition("/")
    job = _find_job(repository, job_id, export.KIND, import_.KIND)
    content = None
    if job.status == jobs.COMPLETED:
        content = jobs.output_content(jobs.connection_of(repository), job.id, name)
    if content is None:
        raise NotFound(f"File `{name}` of bulk data job `{job_id}` was not found.")
    return FhirResponse(status=200, body=content, content_type=export.NDJSON)
