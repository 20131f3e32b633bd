"""Build the HTTP-free FhirRequest from a Flask request (body parsed, headers read)."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from typing import Any

from flask import Request

from fhirserver.errors import BadRequest, Malformed, PayloadTooLarge, UnsupportedMediaType
from fhirserver.http.formats import JSON, body_format
from fhirserver.interactions.request import FhirRequest
from fhirserver.resources import jsonio
from fhirserver.resources.xml import parse_xml
from fhirserver.settings import Settings

JSON_PATCH = "application/json-patch+json"
#: Newline Delimited JSON bodies (a bulk ``$import`` upload).
NDJSON = frozenset({"application/fhir+ndjson", "application/ndjson"})

# Parameters that shape the response, not the query.
RESPONSE_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})


def base_url(http: Request, settings: Settings) -> str:
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/")
    # Built from the Host header directly: werkzeug's host_url re-parses the whole URL.
    return f"{http.scheme}://{http.host}{http.root_path}{settings.base_path.rstrip('/')}"


def _read_raw(http: Request, settings: Settings) -> bytes:
    length = http.content_length
    if length is not None and length > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"The request body has {length} bytes; the limit is {settings.max_body_bytes}."
        )
    raw = http.stream.read(settings.max_body_bytes + 1)
    if len(raw) > settings.max_body_bytes:
        raise PayloadTooLarge(
            f"The request body is over the limit of {settings.max_body_bytes} bytes."
        )
    return raw


def read_body(http: Request, settings: Settings) -> dict[str, Any] | None:
    """The request's resource as a JSON dict (None without a body)."""
    raw = _read_raw(http, settings)
    if not raw.strip():
        return None
    if body_format(http.headers.get("Content-Type"), raw) == JSON:
        try:
            parsed = jsonio.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Malformed(f"The body is not valid JSON: {exc}.") from None
        if not isinstance(parsed, dict):
            raise Malformed("The body must be a JSON object (a FHIR resource).")
        return parsed
    return parse_xml(raw)


def read_json_patch(http: Request, settings: Settings) -> list[Any]:
    """An RFC 6902 JSON Patch document: a JSON array of operations."""
    raw = _read_raw(http, settings)
    try:
        parsed = jsonio.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Malformed(f"The JSON Patch is not valid JSON: {exc}.") from None
    if not isinstance(parsed, list):
        raise BadRequest("A JSON Patch document must be a JSON array of operations.")
    return parsed


def _http_date(text: str | None):
    if not text:
        return None
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise BadRequest(
            f"`{text}` is not an HTTP date (e.g. Wed, 21 Oct 2015 07:28:00 GMT)."
        ) from None


def _prefer_handling(prefer: str | None) -> str | None:
    for token in (prefer or "").replace(";", ",").split(","):
        key, _, value = token.strip().partition("=")
        if key == "handling" and value in ("strict", "lenient"):
            return value
    return None


def _prefer_respond_async(prefer: str | None) -> bool:
    return any(
        token.strip() == "respond-async" for token in (prefer or "").replace(";", ",").split(",")
    )


def build(
    http: Request,
    settings: Settings,
    interaction: str,
    *,
    resource_type: str | None = None,
    id: str | None = None,
    version_id: str | None = None,
    compartment_search: str | None = None,
    with_body: bool = False,
    ndjson_body: bool = False,
) -> FhirRequest:
    params = tuple((key, value) for key, value in http.args.items(multi=True))
    if (
        interaction in ("search-type", "search-system", "search-compartment")
        and http.method == "POST"
    ):
        # POST [type]/_search: parameters in a form body, as well as in the URL.
        if http.content_length and http.mimetype != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType(
                "POST _search takes an application/x-www-form-urlencoded body."
            )
        params += tuple((key, value) for key, value in http.form.items(multi=True))
    body, json_patch, ndjson = None, None, None
    if with_body and http.mimetype == JSON_PATCH:
        json_patch = read_json_patch(http, settings)
    elif with_body and ndjson_body and http.mimetype in NDJSON:
        # Parsed line by line by the operation; the body limit applies as to any body.
        ndjson = _read_raw(http, settings)
    elif with_body:
        body = read_body(http, settings)
    return FhirRequest(
        interaction=interaction,
        base_url=base_url(http, settings),
        resource_type=resource_type,
        id=id,
        version_id=version_id,
        compartment_search=compartment_search,
        params=params,
        body=body,
        json_patch=json_patch,
        if_match=http.headers.get("If-Match"),
        if_none_match=http.headers.get("If-None-Match"),
        if_modified_since=_http_date(http.headers.get("If-Modified-Since")),
        if_none_exist=http.headers.get("If-None-Exist"),
        prefer_handling=_prefer_handling(http.headers.get("Prefer")),
        prefer_respond_async=_prefer_respond_async(http.headers.get("Prefer")),
        ndjson=ndjson,
        settings=settings,
    )
