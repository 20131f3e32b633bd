"""The HTTP-free request and response every interaction works with.

``http/request.py`` builds a FhirRequest from the HTTP request (body parsed,
headers read); ``http/response.py`` turns a FhirResponse into JSON or XML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhirserver.consent.principal import ADMINISTRATOR, Principal
from fhirserver.settings import Settings


@dataclass(frozen=True)
class FhirRequest:
    interaction: str
    #: Absolute base URL of this server, e.g. http://127.0.0.1:8080/fhir (no trailing slash).
    base_url: str
    resource_type: str | None = None
    id: str | None = None
    version_id: str | None = None
    #: A compartment search ``[resource_type]/[id]/[compartment_search]``: the searched type, or ``*``.
    compartment_search: str | None = None
    #: Query (and form) parameters in order, repeated names kept.
    params: tuple[tuple[str, str], ...] = ()
    #: The parsed resource of a POST/PUT (a JSON dict), or None.
    body: dict[str, Any] | None = None
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    if_none_exist: str | None = None
    #: PATCH: the JSON Patch document (a list) of an ``application/json-patch+json`` body.
    json_patch: list[Any] | None = None
    #: Set by a transaction for a POST entry whose fullUrl is referenced:
    #: the id the created resource gets (the server's choice, made up front).
    assigned_id: str | None = None
    #: ``Prefer: handling=strict|lenient`` (http://hl7.org/fhir/R4/search.html#errors).
    prefer_handling: str | None = None
    #: ``Prefer: respond-async`` (http://hl7.org/fhir/R4/async.html): the client takes a 202 and polls.
    prefer_respond_async: bool = False
    principal: Principal = ADMINISTRATOR
    #: An ``application/fhir+ndjson`` body, as sent (a bulk ``$import`` upload).
    ndjson: bytes | None = None
    #: The server's settings (what an operation may do, e.g. which URLs ``$import`` fetches).
    settings: Settings = Settings()

    def param(self, name: str) -> str | None:
        """The last value of a parameter (later values win, as most servers do)."""
        value = None
        for key, item in self.params:
            if key == name:
                value = item
        return value


@dataclass
class FhirResponse:
    status: int = 200
    #: A resource as a JSON-able dict; may hold ``orjson.Fragment`` stored bodies.
    resource: dict[str, Any] | None = None
    #: Stored JSON bytes of a single resource, returned without re-encoding.
    body: bytes | None = None
    location: str | None = None
    version_id: int | None = None
    last_modified: datetime | None = None
    #: True for create/update/patch results, so ``Prefer: return=`` applies.
    is_write_result: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    #: A body that is not a FHIR resource (a bulk data manifest, an ndjson file):
    #: ``body`` goes out as it is, with this Content-Type, whatever format was negotiated.
    content_type: str | None = None

    @property
    def etag(self) -> str | None:
        return None if self.version_id is None else f'W/"{self.version_id}"'
