"""``$import`` at system level — after the Bulk Data import proposal
(https://github.com/smart-on-fhir/bulk-import/blob/master/import.md, "Ping and Pull").

``POST [base]/$import`` takes either

- a Parameters resource naming ndjson files by URL: ``inputFormat``
  (application/fhir+ndjson), ``inputSource`` (uri), one or more ``input`` with
  the parts ``type`` (a resource type) and ``url``, optional ``mode`` and
  ``storageDetail``. ``Prefer: respond-async`` is required: the job is queued
  and answered with 202 and ``Content-Location``, the status URL
  (``[base]/_bulk/import/[job]``). Only URLs whose origin the server's
  ``FHIRSERVER_IMPORT_ALLOWED_ORIGINS`` lists are accepted (400 otherwise, and
  for any scheme but http and https);
- or the ndjson itself (``Content-Type: application/fhir+ndjson`` or
  ``application/ndjson``, up to the normal body limit): with
  ``Prefer: respond-async`` it is stored with a queued job like the above;
  without it, it is loaded in the request, and the answer is 200 with an
  OperationOutcome of what was created, already present and rejected (by line).

A worker (fhirserver/bulk/import_.py) runs the jobs.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fhirserver.bulk import import_, jobs
from fhirserver.bulk.status import import_status_url
from fhirserver.errors import BadRequest, Issue
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput
from fhirserver.resources.outcome import operation_outcome
from fhirserver.resources.registry import is_resource_type
from fhirserver.storage.repository import Repository

_SUPPORTED = frozenset({"inputFormat", "inputSource", "input", "mode", "storageDetail"})
#: The proposal's only mode here: each resource is imported on its own.
_MODES = frozenset({"batch"})


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    if request.ndjson is not None:
        return _upload(request, repository)
    if request.body is None:
        raise BadRequest(
            "$import takes a Parameters resource naming ndjson files by URL, or the ndjson itself "
            "(Content-Type: application/fhir+ndjson)."
        )
    if not request.prefer_respond_async:
        raise BadRequest(
            "$import of files by URL runs asynchronously: send the header `Prefer: respond-async`."
        )
    given = OperationInput.of(request)
    unsupported = sorted(set(given.parameters) - _SUPPORTED)
    if unsupported:
        raise BadRequest(
            f"$import parameter(s) {', '.join(f'`{n}`' for n in unsupported)} are not supported "
            "by this server."
        )
    wanted = import_.ImportRequest(
        base_url=request.base_url,
        input_source=_input_source(given),
        input_format=_input_format(given),
        mode=_mode(given),
    )
    _check_storage_detail(given)
    inputs = _inputs(given, request.settings.import_allowed_origins)
    conn = jobs.connection_of(repository)
    job = jobs.enqueue(conn, import_.KIND, _request_url(request), wanted.to_json())
    jobs.add_inputs(conn, job.id, [(resource_type, url, None) for resource_type, url in inputs])
    return _accepted(request, job.id)


def _upload(request: FhirRequest, repository: Repository) -> FhirResponse:
    content = request.ndjson
    assert content is not None
    if not content.strip():
        raise BadRequest("The uploaded ndjson is empty.")
    conn = jobs.connection_of(repository)
    if request.prefer_respond_async:
        wanted = import_.ImportRequest(base_url=request.base_url)
        job = jobs.enqueue(conn, import_.KIND, _request_url(request), wanted.to_json())
        jobs.add_inputs(conn, job.id, [(None, None, content)])
        return _accepted(request, job.id)
    report = import_.load_upload(conn, content, request.base_url)
    return FhirResponse(status=200, resource=import_.upload_outcome(report))


def _accepted(request: FhirRequest, job_id: str) -> FhirResponse:
    location = import_status_url(request.base_url, job_id)
    issue = Issue(
        code="informational",
        severity="information",
        diagnostics=f"Import job `{job_id}` is queued; poll {location} for its status.",
    )
    return FhirResponse(
        status=202, resource=operation_outcome([issue]), headers={"Content-Location": location}
    )


def _text(given: OperationInput, name: str, *, required: bool) -> str | None:
    value = given.string(name)
    if value is not None and not value.strip():
        value = None
    if value is None and required:
        raise BadRequest(f"$import needs the parameter `{name}`.")
    return value


def _input_format(given: OperationInput) -> str:
    value = _text(given, "inputFormat", required=True)
    assert value is not None
    if value.strip() not in import_.INPUT_FORMATS:
        raise BadRequest(
            f"inputFormat `{value}` is not supported; use application/fhir+ndjson "
            "(or application/ndjson, ndjson)."
        )
    return value.strip()


def _input_source(given: OperationInput) -> str:
    value = _text(given, "inputSource", required=True)
    assert value is not None
    return value


def _mode(given: OperationInput) -> str | None:
    value = _text(given, "mode", required=False)
    if value is not None and value not in _MODES:
        raise BadRequest(
            f"mode `{value}` is not supported: this server imports each resource on its own "
            "(mode `batch`, the default)."
        )
    return value


def _check_storage_detail(given: OperationInput) -> None:
    """``storageDetail``: only ``https`` (plain GET requests), the proposal's default."""
    value = given.value("storageDetail")
    if value is None:
        return
    kind = _part(value, "type") if isinstance(value, list) else value
    if kind != "https":
        raise BadRequest(
            f"storageDetail type `{kind}` is not supported; files are fetched over http(s)."
        )


def _inputs(given: OperationInput, allowed_origins: tuple[str, ...]) -> list[tuple[str, str]]:
    """(type, url) of each ``input``, checked: a known type, an http(s) URL of an allowed origin."""
    inputs: list[tuple[str, str]] = []
    entries = given.values("input")
    if not entries:
        raise BadRequest("$import needs at least one `input` (with the parts `type` and `url`).")
    for number, parts in enumerate(entries, 1):
        if not isinstance(parts, list):
            raise BadRequest(f"input {number} must have the parts `type` and `url`.")
        resource_type, url = _part(parts, "type"), _part(parts, "url")
        if not isinstance(resource_type, str) or not isinstance(url, str) or not url.strip():
            raise BadRequest(f"input {number} must have the parts `type` and `url`.")
        if not is_resource_type(resource_type):
            raise BadRequest(
                f"input {number}: type `{resource_type}` is not a resource type this server stores."
            )
        import_.check_url(url.strip(), allowed_origins)
        inputs.append((resource_type, url.strip()))
    return inputs


def _part(parts: list, name: str) -> object:
    """The value of the part ``name`` (value[x]); None when absent."""
    for part in parts:
        if isinstance(part, dict) and part.get("name") == name:
            for key, value in part.items():
                if key.startswith("value"):
                    return value
    return None


def _request_url(request: FhirRequest) -> str:
    """The kick-off URL, as the manifest's ``request`` repeats it."""
    query = urlencode(request.params)
    return f"{request.base_url}/$import" + (f"?{query}" if query else "")
