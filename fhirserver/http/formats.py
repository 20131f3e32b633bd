"""Content negotiation: which FHIR format a body is in, and which to answer in.

http://hl7.org/fhir/R4/http.html#mime-type — ``application/fhir+json`` and
``application/fhir+xml`` (also ``application/json``, ``application/xml``,
``text/xml``); ``_format`` overrides the Accept header.
"""

from __future__ import annotations

from dataclasses import dataclass

from fhirserver.errors import NotAcceptable, UnsupportedMediaType

JSON, XML = "json", "xml"

_MIME_FORMAT = {
    "application/fhir+json": JSON,
    "application/json": JSON,
    "application/json+fhir": JSON,  # DSTU2/STU3 clients still send it
    "text/json": JSON,
    "application/fhir+xml": XML,
    "application/xml": XML,
    "application/xml+fhir": XML,
    "text/xml": XML,
}
_FORMAT_PARAM = {"json": JSON, "xml": XML, **_MIME_FORMAT}
_DEFAULT_MIME = {JSON: "application/fhir+json", XML: "application/fhir+xml"}
#: What bulk data clients accept for an output file
#: (http://hl7.org/fhir/uv/bulkdata/export.html#file-request); errors then answer in JSON.
_NDJSON_MIMES = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})


@dataclass(frozen=True)
class ResponseFormat:
    format: str
    mime: str

    @property
    def content_type(self) -> str:
        return f"{self.mime}; charset=utf-8"


DEFAULT = ResponseFormat(JSON, _DEFAULT_MIME[JSON])


def body_format(content_type: str | None, body: bytes) -> str:
    """The format of a request body, from its Content-Type (415 when not a FHIR format)."""
    if not content_type:
        # Be forgiving with clients that omit the header on an obvious body.
        first = body.lstrip()[:1]
        if first == b"{":
            return JSON
        if first == b"<":
            return XML
        raise UnsupportedMediaType(
            "The request has a body but no Content-Type; use application/fhir+json or application/fhir+xml."
        )
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime not in _MIME_FORMAT:
        raise UnsupportedMediaType(
            f"Content-Type `{mime}` is not supported; use application/fhir+json or application/fhir+xml."
        )
    return _MIME_FORMAT[mime]


def response_format(format_param: str | None, accept: str | None) -> ResponseFormat:
    """The format to answer in: ``_format`` first, then the Accept header (406 when nothing fits)."""
    if format_param:
        key = (
            format_param.strip().lower().replace(" ", "+")
        )  # '+' arrives as ' ' from a query string
        key = key.split(";", 1)[0]
        if key not in _FORMAT_PARAM:
            raise NotAcceptable(f"_format `{format_param}` is not supported; use json or xml.")
        fmt = _FORMAT_PARAM[key]
        return ResponseFormat(fmt, key if key in _MIME_FORMAT else _DEFAULT_MIME[fmt])
    if not accept:
        return DEFAULT
    best: tuple[float, int, ResponseFormat] | None = None
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        mime = fields[0].lower()
        quality = 1.0
        for field in fields[1:]:
            if field.startswith("q="):
                try:
                    quality = float(field[2:])
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        if mime in _MIME_FORMAT:
            candidate = ResponseFormat(_MIME_FORMAT[mime], mime)
        elif mime in ("*/*", "application/*") or mime in _NDJSON_MIMES:
            candidate = DEFAULT
        elif mime == "text/*":
            candidate = ResponseFormat(XML, "text/xml")
        else:
            continue
        # Highest quality wins; among equals, the first listed.
        ranked = (quality, -position, candidate)
        if best is None or ranked[:2] > best[:2]:
            best = ranked
    if best is None:
        raise NotAcceptable(
            f"None of the media types in `Accept: {accept}` is served; use application/fhir+json or application/fhir+xml."
        )
    return best[2]
