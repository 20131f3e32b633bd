"""batch and transaction: ``POST [base]`` with a Bundle — http://hl7.org/fhir/R4/http.html#transaction

Each entry becomes a FhirRequest and runs through the same pipeline as a
single HTTP request (interactions/pipeline.py: handler, then audit), on the
request's repository — so validation, access control and audit apply to every
entry without code of their own.

transaction: one database transaction. Entries are processed DELETE, POST,
PUT/PATCH, then GET/HEAD. Before anything runs, every POST gets its id (or,
with ``ifNoneExist``, the matching resource), every conditional PUT its
target, and every reference to an entry's ``urn:uuid:``/``urn:oid:`` fullUrl
and every conditional reference (``Patient?identifier=...``) in the Bundle is
rewritten to ``Type/id``. If any entry fails, nothing is written and the
answer is the failing entry's error, naming the entry.

batch: entries are independent; each runs in a savepoint, and a failing
entry answers its own status and OperationOutcome in the response Bundle.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, replace
from datetime import datetime
from http import HTTPStatus
from typing import Any

import orjson

from fhirserver.errors import BadRequest, FhirError, Issue
from fhirserver.interactions import conditional, pipeline
from fhirserver.interactions.entry_url import EntryTarget, route
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.resources import meta
from fhirserver.resources.datetimes import parse_range
from fhirserver.resources.outcome import operation_outcome
from fhirserver.storage.repository import Repository

#: Processing order of a transaction (http://hl7.org/fhir/R4/http.html#trules).
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_LOCAL_URN = ("urn:uuid:", "urn:oid:")


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: dict | None
    target: EntryTarget
    request: FhirRequest


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    bundle = request.body
    if bundle is None or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST to the server base takes a Bundle of type batch or transaction.")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest(f"Bundle.type must be batch or transaction, not `{kind}`.")
    raw_entries = bundle.get("entry") or []
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be a list.")
    if kind == "transaction":
        return _transaction(request, repository, raw_entries)
    return _batch(request, repository, raw_entries)


# -- transaction -------------------------------------------------------------------


def _transaction(request: FhirRequest, repository: Repository, raw: list) -> FhirResponse:
    entries = [_at(i, lambda i=i, e=e: _entry(i, e, request)) for i, e in enumerate(raw)]
    _check_distinct(entries)
    identities: dict[str, str] = {}
    for entry in entries:
        _at(entry.index, lambda entry=entry: _assign_identity(entry, repository, identities))
    for entry in entries:
        if entry.resource is not None:
            rewritten = _at(
                entry.index,
                lambda entry=entry: _rewrite_references(
                    entry.resource, identities, repository, request.base_url
                ),
            )
            entry.request = replace(entry.request, body=rewritten)
    responses: dict[int, dict] = {}
    for entry in sorted(entries, key=lambda e: (_ORDER[e.method], e.index)):
        response = _at(
            entry.index,
            lambda entry=entry: pipeline.run(entry.target.interaction, entry.request, repository),
        )
        responses[entry.index] = _response_entry(response, request.base_url, entry)
    return _bundle("transaction-response", [responses[e.index] for e in entries])


def _at(index: int, step):
    """Run one step of entry ``index``; a failure names the entry and fails the whole transaction."""
    try:
        return step()
    except FhirError as error:
        raise _named(error, index) from error


def _named(error: FhirError, index: int) -> FhirError:
    where = f"Bundle.entry[{index}]"
    named = type(error).__new__(type(error))
    FhirError.__init__(
        named,
        f"{where}: {error.message}",
        issues=[
            Issue(
                code=issue.code,
                severity=issue.severity,
                diagnostics=f"{where}: {issue.diagnostics}",
                expression=issue.expression or (where,),
            )
            for issue in error.issues
        ],
        headers=error.headers,
    )
    return named


def _check_distinct(entries: list[_Entry]) -> None:
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.full_url is None:
            continue
        if entry.full_url in seen:
            raise BadRequest(
                f"Bundle.entry[{entry.index}]: fullUrl `{entry.full_url}` is also the fullUrl of"
                f" entry {seen[entry.full_url]}."
            )
        seen[entry.full_url] = entry.index
    targets: dict[tuple[str, str], int] = {}
    for entry in entries:
        t = entry.target
        if t.id is None or t.resource_type is None or entry.method in ("GET", "HEAD"):
            continue
        key = (t.resource_type, t.id)
        if key in targets:
            raise BadRequest(
                f"Bundle.entry[{entry.index}]: {t.resource_type}/{t.id} is changed by entry"
                f" {targets[key]} too; a transaction changes a resource once."
            )
        targets[key] = entry.index


def _assign_identity(entry: _Entry, repository: Repository, identities: dict[str, str]) -> None:
    """Decide up front which resource a POST or conditional PUT writes, so references can name it."""
    target = entry.target
    resource_type = target.resource_type
    if entry.method == "POST" and target.interaction.code == "create":
        assert resource_type is not None
        existing = None
        if entry.request.if_none_exist:
            params = conditional.criteria_of(entry.request.if_none_exist, resource_type)
            ids = conditional.matches(repository, resource_type, params)
            existing = conditional.at_most_one(ids, resource_type, params)
        if existing is not None:
            identity = existing
        else:
            identity = meta.new_id()
            entry.request = replace(entry.request, assigned_id=identity)
        _remember(entry, identities, f"{resource_type}/{identity}")
    elif entry.method == "PUT" and target.conditional:
        assert resource_type is not None
        params = list(target.params)
        ids = conditional.matches(repository, resource_type, params)
        match = conditional.at_most_one(ids, resource_type, params)
        body_id = (entry.resource or {}).get("id")
        if match is not None and body_id is not None and body_id != match:
            raise BadRequest(
                f"The resource id `{body_id}` is not the id of the resource the criteria match (`{match}`)."
            )
        identity = match or body_id or meta.new_id()
        # From here on a plain update of the chosen id (the criteria's lock is held).
        entry.request = replace(entry.request, id=identity, params=())
        entry.resource = {**(entry.resource or {}), "id": identity}
        _remember(entry, identities, f"{resource_type}/{identity}")
    elif entry.method == "PUT" and target.id is not None:
        _remember(entry, identities, f"{resource_type}/{target.id}")


def _remember(entry: _Entry, identities: dict[str, str], reference: str) -> None:
    if entry.full_url:
        identities[entry.full_url] = reference


def _rewrite_references(
    value: Any, identities: dict[str, str], repository: Repository, base_url: str
) -> Any:
    """A copy of ``value`` with references to entries' fullUrls and conditional references resolved."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                out[key] = _resolve_reference(item, identities, repository, base_url)
            elif key == "div" and isinstance(item, str) and identities:
                # Narrative links to entries follow them too (http.html#trules).
                for full_url, reference in identities.items():
                    if full_url.startswith(_LOCAL_URN):
                        item = item.replace(f'"{full_url}"', f'"{reference}"')
                out[key] = item
            else:
                out[key] = _rewrite_references(item, identities, repository, base_url)
        return out
    if isinstance(value, list):
        return [_rewrite_references(item, identities, repository, base_url) for item in value]
    return value


def _resolve_reference(
    reference: str, identities: dict[str, str], repository: Repository, base_url: str
) -> str:
    if reference in identities:
        return identities[reference]
    if reference.startswith(_LOCAL_URN):
        raise BadRequest(f"Reference `{reference}` names no entry of this transaction.")
    head, question, query = reference.partition("?")
    if question and "/" not in head and "://" not in head:
        params = conditional.criteria_of(reference, head)
        ids = repository.find(head, params, limit=2)
        if not ids:
            raise BadRequest(f"The conditional reference `{reference}` matches no resource.")
        return f"{head}/{conditional.at_most_one(ids, head, params)}"
    return reference


# -- batch --------------------------------------------------------------------------


def _batch(request: FhirRequest, repository: Repository, raw: list) -> FhirResponse:
    out = []
    for index, raw_entry in enumerate(raw):
        try:
            entry = _entry(index, raw_entry, request)
            with repository.savepoint():
                response = pipeline.run(entry.target.interaction, entry.request, repository)
            out.append(_response_entry(response, request.base_url, entry))
        except FhirError as error:
            out.append(_error_entry(_named(error, index)))
    return _bundle("batch-response", out)


def _error_entry(error: FhirError) -> dict:
    return {
        "response": {
            "status": _status_line(error.status),
            "outcome": operation_outcome(error.issues),
        }
    }


# -- entries -----------------------------------------------------------------------


def _entry(index: int, raw: object, outer: FhirRequest) -> _Entry:
    if not isinstance(raw, dict):
        raise BadRequest("A Bundle entry must be an object.")
    entry_request = raw.get("request")
    if not isinstance(entry_request, dict):
        raise BadRequest("Every entry needs `request` (method and url).")
    method, url = entry_request.get("method"), entry_request.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise BadRequest(
            "entry.request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url."
        )
    resource = raw.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise BadRequest("entry.resource must be a resource.")
    target = route(method, url, outer.base_url)
    if method in ("POST", "PUT") and target.interaction.code in ("create", "update"):
        if resource is None:
            raise BadRequest(f"{method} {url} needs entry.resource.")
    body, json_patch = resource, None
    if method == "PATCH":
        body, json_patch = _patch_body(resource)
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    fhir_request = FhirRequest(
        interaction=target.interaction.code,
        base_url=outer.base_url,
        resource_type=target.resource_type,
        id=target.id,
        version_id=target.version_id,
        compartment_search=target.compartment_search,
        params=target.params,
        body=body,
        json_patch=json_patch,
        if_match=_text(entry_request, "ifMatch"),
        if_none_match=_text(entry_request, "ifNoneMatch"),
        if_modified_since=_instant(entry_request.get("ifModifiedSince")),
        if_none_exist=_text(entry_request, "ifNoneExist"),
        prefer_handling=outer.prefer_handling,
        principal=outer.principal,
    )
    return _Entry(index, method, url, full_url, resource, target, fhir_request)


def _patch_body(resource: dict | None) -> tuple[dict | None, list | None]:
    """A PATCH entry carries a FHIRPath Patch (Parameters) or a JSON Patch in a Binary."""
    if resource is None:
        raise BadRequest("A PATCH entry needs entry.resource: Parameters or a Binary JSON Patch.")
    if resource.get("resourceType") == "Parameters":
        return resource, None
    if resource.get("resourceType") == "Binary":
        if resource.get("contentType") != "application/json-patch+json":
            raise BadRequest(
                "A Binary PATCH body must have contentType application/json-patch+json."
            )
        try:
            patch = orjson.loads(base64.b64decode(resource.get("data") or "", validate=True))
        except (binascii.Error, ValueError):
            raise BadRequest("The Binary's data is not a base64 JSON Patch document.") from None
        if not isinstance(patch, list):
            raise BadRequest("A JSON Patch document must be a JSON array of operations.")
        return None, patch
    raise BadRequest("A PATCH entry's resource must be Parameters or Binary.")


def _text(entry_request: dict, key: str) -> str | None:
    value = entry_request.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"entry.request.{key} must be a string.")
    return value


def _instant(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("entry.request.ifModifiedSince must be an instant.")
    return parse_range(value, what="instant (entry.request.ifModifiedSince)")[0]


# -- responses ---------------------------------------------------------------------


def _response_entry(response: FhirResponse, base_url: str, entry: _Entry) -> dict:
    result: dict = {"status": _status_line(response.status)}
    if response.location:
        result["location"] = response.location.removeprefix(base_url + "/")
    if response.etag:
        result["etag"] = response.etag
    if response.last_modified is not None:
        result["lastModified"] = meta.format_instant(response.last_modified)
    out: dict = {"response": result}
    if entry.method in ("GET", "HEAD") and response.status == 200:
        if response.body is not None:
            out["resource"] = orjson.Fragment(response.body)
        elif response.resource is not None:
            out["resource"] = response.resource
    elif response.resource is not None and response.resource.get("resourceType") == (
        "OperationOutcome"
    ):
        result["outcome"] = response.resource
    if "resource" in out and response.location is None and entry.target.id is not None:
        out["fullUrl"] = f"{base_url}/{entry.target.resource_type}/{entry.target.id}"
    return out


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


def _bundle(kind: str, entries: list[dict]) -> FhirResponse:
    return FhirResponse(
        status=200, resource={"resourceType": "Bundle", "type": kind, "entry": entries}
    )


__all__ = ["handle"]
