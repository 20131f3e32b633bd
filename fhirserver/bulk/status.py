"""Status, cancel and file requests of a bulk data export — HTTP-free handlers.

http://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-status-request:

- ``GET [base]/_bulk/export/[job]``: 202 with ``X-Progress`` while queued or
  running; 200 with the JSON manifest when complete; 500 with an
  OperationOutcome when failed; 404 when unknown or cancelled.
- ``DELETE`` on the same URL cancels the job and deletes its files (202);
  later requests answer 404.
- ``GET [base]/_bulk/files/[job]/[file]``: one ndjson file.

They run through the same pipeline as every interaction (http/dispatch.py), so
access control and audit apply to them as to any read.
"""

from __future__ import annotations

from fhirserver.bulk import export, jobs
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


def file_url(base_url: str, job_id: str, name: str) -> str:
    return f"{base_url}/_bulk/files/{job_id}/{name}"


def _export_job(repository: Repository, job_id: str) -> jobs.Job:
    job = jobs.find(jobs.connection_of(repository), job_id)
    if job is None or job.kind != export.KIND or job.status == jobs.CANCELLED:
        raise NotFound(f"Bulk data export job `{job_id}` was not found.")
    return job


def handle_status(request: FhirRequest, repository: Repository) -> FhirResponse:
    assert request.id is not None
    job = _export_job(repository, request.id)
    if job.status in (jobs.QUEUED, jobs.RUNNING):
        return FhirResponse(
            status=202,
            headers={"X-Progress": job.progress or job.status, "Retry-After": RETRY_AFTER},
        )
    if job.status == jobs.FAILED:
        issue = Issue(code="exception", diagnostics=job.error or "The export failed.")
        return FhirResponse(status=500, resource=operation_outcome([issue]))
    assert job.transaction_time is not None
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


def handle_cancel(request: FhirRequest, repository: Repository) -> FhirResponse:
    """http://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-delete-request"""
    assert request.id is not None
    if not jobs.cancel(jobs.connection_of(repository), request.id):
        raise NotFound(f"Bulk data export job `{request.id}` was not found.")
    issue = Issue(
        code="informational",
        severity="information",
        diagnostics=f"Bulk data export job `{request.id}` was cancelled; its files are deleted.",
    )
    return FhirResponse(status=202, resource=operation_outcome([issue]))


def handle_file(request: FhirRequest, repository: Repository) -> FhirResponse:
    """http://hl7.org/fhir/uv/bulkdata/export.html#file-request — the route passes ``[job]/[file]`` as the id."""
    assert request.id is not None
    job_id, _, name = request.id.partition("/")
    job = _export_job(repository, job_id)
    content = None
    if job.status == jobs.COMPLETED:
        content = jobs.output_content(jobs.connection_of(repository), job.id, name)
    if content is None:
        raise NotFound(f"File `{name}` of bulk data export job `{job_id}` was not found.")
    return FhirResponse(status=200, body=content, content_type=export.NDJSON)
