"""FhirResponse -> HTTP: JSON or XML body, status, ETag, Last-Modified, Location.

A stored resource read as JSON goes out as the stored bytes, untouched.
``Prefer: return=`` (http://hl7.org/fhir/R4/http.html#ops) shapes the body of
create/update/patch results; ``_summary``/``_elements`` shape a single resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from flask import Response

from fhirserver.errors import BadRequest, Issue
from fhirserver.http.formats import DEFAULT, JSON, ResponseFormat
from fhirserver.interactions.request import FhirResponse
from fhirserver.resources import jsonio
from fhirserver.resources.outcome import operation_outcome
from fhirserver.resources.subset import apply_elements, apply_summary
from fhirserver.resources.xml import to_xml

_PREFER_RETURN = ("minimal", "representation", "OperationOutcome")


@dataclass(frozen=True)
class Shape:
    """How the client wants the answer shaped."""

    format: ResponseFormat = DEFAULT
    pretty: bool = False
    summary: str | None = None
    elements: tuple[str, ...] = ()
    prefer_return: str | None = None

    @property
    def reshapes(self) -> bool:
        return (
            self.pretty or self.format.format != JSON or bool(self.summary) or bool(self.elements)
        )


def parse_shape(fmt: ResponseFormat, args, prefer: str | None) -> Shape:
    pretty = (args.get("_pretty") or "").lower() == "true"
    summary = args.get("_summary")
    if summary is not None and summary not in ("true", "text", "data", "false", "count"):
        raise BadRequest(f"_summary `{summary}` is not one of true, text, data, count, false.")
    elements = tuple(
        name.strip()
        for value in args.getlist("_elements")
        for name in value.split(",")
        if name.strip()
    )
    return Shape(fmt, pretty, summary, elements, _prefer_return(prefer))


def _prefer_return(prefer: str | None) -> str | None:
    if not prefer:
        return None
    for part in prefer.split(";"):
        for token in part.split(","):
            key, _, value = token.strip().partition("=")
            if key.strip() == "return" and value.strip().strip('"') in _PREFER_RETURN:
                return value.strip().strip('"')
    return None


def render(response: FhirResponse, shape: Shape, *, shape_resource: bool = False) -> Response:
    headers = dict(response.headers)
    if response.etag:
        headers["ETag"] = response.etag
    if response.last_modified is not None:
        headers["Last-Modified"] = format_datetime(response.last_modified, usegmt=True)
    if response.location:
        headers["Location"] = response.location
        headers["Content-Location"] = response.location
    if response.status == 304:
        return Response(status=304, headers=headers)
    if response.content_type is not None:
        # Not a FHIR resource (a bulk data manifest or ndjson file): no reshaping, no XML.
        return Response(
            response.body or b"",
            status=response.status,
            headers=headers,
            content_type=response.content_type,
        )

    body: bytes | None = response.body
    resource: Any = response.resource
    if response.is_write_result and shape.prefer_return == "minimal":
        return Response(status=response.status, headers=headers)
    if response.is_write_result and shape.prefer_return == "OperationOutcome":
        body, resource = None, operation_outcome([_write_outcome(response)])
    elif shape_resource and (shape.summary not in (None, "false", "count") or shape.elements):
        resource = _as_dict(body, resource)
        body = None
        if shape.summary not in (None, "false"):
            resource = apply_summary(resource, shape.summary)
        if shape.elements:
            resource = apply_elements(resource, list(shape.elements))
    if body is None and resource is None:
        return Response(status=response.status, headers=headers)

    if shape.format.format == JSON:
        if body is None or shape.pretty:
            body = jsonio.dumps(
                _as_dict(body, resource) if shape.pretty else resource, pretty=shape.pretty
            )
        return Response(
            body, status=response.status, headers=headers, content_type=shape.format.content_type
        )
    xml = to_xml(_as_dict(body, resource), pretty=shape.pretty)
    return Response(
        xml, status=response.status, headers=headers, content_type=shape.format.content_type
    )


def _as_dict(body: bytes | None, resource: Any) -> dict:
    """A plain dict of the answer: parses stored bytes, resolves embedded orjson Fragments."""
    if body is not None:
        return jsonio.loads(body)
    return jsonio.loads(jsonio.dumps(resource))


def _write_outcome(response: FhirResponse) -> Issue:
    what = response.location or "the resource"
    verb = "created" if response.status == 201 else "updated"
    return Issue(
        code="informational", severity="information", diagnostics=f"Successfully {verb} {what}."
    )
