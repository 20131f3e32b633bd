"""``$meta``, ``$meta-add``, ``$meta-delete`` — http://hl7.org/fhir/R4/resource-operations.html#meta

Tags, security labels and profiles are not content: adding or removing them
makes no new version (the current one is rewritten in place, its versionId
and lastUpdated unchanged). At type and system level ``$meta`` lists what is
in use, read from the search index (``_tag``, ``_security``, ``_profile``).
"""

from __future__ import annotations

from fhirserver.errors import BadRequest
from fhirserver.interactions.common import require_present, require_valid_id
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations.parameters import OperationInput, parameters_resource
from fhirserver.resources import jsonio
from fhirserver.storage.repository import Repository

_CODINGS = ("tag", "security")


def handle_meta(request: FhirRequest, repository: Repository) -> FhirResponse:
    if request.id is None:
        meta = repository.meta_in_use(request.resource_type)
    else:
        meta = _current_meta(request, repository)
    return _answer(meta)


def handle_add(request: FhirRequest, repository: Repository) -> FhirResponse:
    return _change(request, repository, add=True)


def handle_delete(request: FhirRequest, repository: Repository) -> FhirResponse:
    return _change(request, repository, add=False)


def _change(request: FhirRequest, repository: Repository, *, add: bool) -> FhirResponse:
    assert request.resource_type is not None and request.id is not None
    given = _meta_parameter(OperationInput.of(request))
    meta = _current_meta(request, repository)
    for key in _CODINGS:
        current = list(meta.get(key) or [])
        keys = {_coding_key(c) for c in given.get(key) or []}
        if add:
            present = {_coding_key(c) for c in current}
            current += [c for c in given.get(key) or [] if _coding_key(c) not in present]
        else:
            current = [c for c in current if _coding_key(c) not in keys]
        meta[key] = current
    profiles = list(meta.get("profile") or [])
    if add:
        profiles += [p for p in given.get("profile") or [] if p not in profiles]
    else:
        profiles = [p for p in profiles if p not in (given.get("profile") or [])]
    meta["profile"] = profiles
    stored = repository.replace_meta(request.resource_type, request.id, meta)
    assert stored is not None and stored.body is not None  # _current_meta found it under the lock
    return _answer(jsonio.loads(stored.body).get("meta") or {})


def _current_meta(request: FhirRequest, repository: Repository) -> dict:
    assert request.resource_type is not None and request.id is not None
    require_valid_id(request.resource_type, request.id)
    version = require_present(
        request.resource_type, request.id, repository.read(request.resource_type, request.id)
    )
    assert version.body is not None
    return dict(jsonio.loads(version.body).get("meta") or {})


def _meta_parameter(given: OperationInput) -> dict:
    meta = given.value("meta")
    if not isinstance(meta, dict):
        raise BadRequest("This operation needs a `meta` parameter of type Meta (valueMeta).")
    for key in _CODINGS:
        codings = meta.get(key, [])
        if not isinstance(codings, list) or not all(
            isinstance(c, dict) and (c.get("code") or c.get("system")) for c in codings
        ):
            raise BadRequest(f"meta.{key} must be a list of Codings with a system or code.")
    profiles = meta.get("profile", [])
    if not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles):
        raise BadRequest("meta.profile must be a list of canonical URLs.")
    return meta


def _coding_key(coding: dict) -> tuple[str | None, str | None]:
    return coding.get("system"), coding.get("code")


def _answer(meta: dict) -> FhirResponse:
    out = {k: v for k, v in meta.items() if v not in (None, [], "")}
    return FhirResponse(
        status=200, resource=parameters_resource({"name": "return", "valueMeta": out})
    )
