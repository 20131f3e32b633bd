"""The FHIR XML format (http://hl7.org/fhir/R4/xml.html), to and from the JSON form.

The server keeps resources as JSON; XML is only a wire format. Both directions
are driven by the element tables of the fhir.resources R4B models
(:func:`fhirserver.resources.validate.elements`: element order, cardinality,
primitive or complex, type), and a parsed resource is validated by the models
through :func:`validate_resource`, so XML and JSON bodies meet the same rules
and report problems with the same FHIRPath locations.

We do not use ``model_validate_xml`` / ``model_dump_xml`` of fhir.resources
8.3, although the models are the reference for everything here, because:

- reading, it drops element ids given as XML attributes (``<name id="n1">``),
  fails with a bare ``KeyError`` on an unknown element or on a prefixed FHIR
  namespace (``<f:Patient xmlns:f=...>``), accepts elements in any namespace,
  and reports a nested error without its location (``code: Field required``
  instead of ``Patient.contained[0].code``);
- writing, it needs a model built from the stored JSON: a validate plus a dump
  on every XML read (measured over the R4 examples: ~8.6 ms per resource, against
  ~0.44 ms for :func:`to_xml`), which the performance rules of
  docs/ARCHITECTURE.md exclude from the read path, and it normalises values on
  the way (``+00:00`` becomes ``Z``, whitespace in base64 is dropped).

Security (http://hl7.org/fhir/R4/security.html#input): the parser never
resolves entities, loads a DTD or touches the network, and any document with a
DOCTYPE is refused outright.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import orjson
from lxml import etree

from fhirserver.errors import Issue, Malformed, Unprocessable
from fhirserver.resources.validate import (
    MAX_DEPTH,
    MAX_ISSUES,
    XHTML_NS,
    ElementInfo,
    elements,
    hardened_xml_parser,
    primitive_extension_model,
    resource_model,
    resource_type_of,
    validate_resource,
)

FHIR_NS = "http://hl7.org/fhir"
_XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

_F = f"{{{FHIR_NS}}}"  # Clark notation prefix of FHIR element tags

# http://hl7.org/fhir/R4/datatypes.html: the lexical forms of the numbers.
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
# Long enough for the plain-digit spelling PostgreSQL JSONB gives large exponents
# (-1E+245 comes back as 246 digits); short enough to bound the work.
_MAX_DECIMAL_CHARS = 1024
_INTEGER_TYPES = frozenset({"integer", "unsignedInt", "positiveInt", "integer64"})


# --------------------------------------------------------------------------
# XML -> JSON
# --------------------------------------------------------------------------


def parse_xml(body: bytes | str, expected_type: str | None = None) -> dict:
    """The JSON form of a FHIR XML resource, validated.

    http://hl7.org/fhir/R4/xml.html. Raises Malformed (400) for a body that is
    not well-formed XML, has a DOCTYPE or is not in the FHIR namespace;
    BadRequest (400) for a root that is not a supported resource type (or not
    ``expected_type``); Unprocessable (422) for XML that does not follow the
    resource's definition, with FHIRPath locations as for JSON.
    """
    if isinstance(body, str):
        # An encoding declaration makes lxml refuse a str; the bytes are what
        # the declaration describes.
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)) or not body.strip():
        raise Malformed("The body is empty; a FHIR XML resource was expected.")
    # Refuse before parsing when the DTD is visible in the bytes; the check on
    # docinfo below also covers encodings (UTF-16) that hide it from this one.
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise _no_doctype()
    try:
        root = etree.fromstring(bytes(body), hardened_xml_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise Malformed(f"The body is not well-formed XML: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.system_url:
        raise _no_doctype()

    qname = etree.QName(root)
    if qname.namespace != FHIR_NS:
        ns = f"namespace `{qname.namespace}`" if qname.namespace else "no namespace"
        raise Malformed(
            f"The root element <{qname.localname}> is in {ns}; "
            f"FHIR XML resources are in the namespace {FHIR_NS}."
        )
    rtype = resource_type_of({"resourceType": qname.localname}, expected_type)
    reader = _Reader()
    try:
        data = reader.resource(root, resource_model(rtype), rtype, 0)
    except RecursionError:
        reader.add("structure", rtype, "the resource is nested too deeply")
        data = {}
    if reader.issues:
        first = reader.issues[0].diagnostics
        more = f" (and {len(reader.issues) - 1} more issues)" if len(reader.issues) > 1 else ""
        raise Unprocessable(
            f"The {rtype} resource is not valid: {first}{more}", issues=reader.issues
        )
    return validate_resource(data, expected_type)


def _no_doctype() -> Malformed:
    text = "XML with a DOCTYPE (DTDs, entity declarations) is not accepted."
    return Malformed(text, issues=[Issue(code="security", diagnostics=text)])


class _Reader:
    """Turns FHIR XML elements into their JSON form, collecting issues with their paths."""

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, code: str, path: str, text: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(code=code, diagnostics=f"{path}: {text}", expression=(path,)))

    def resource(self, el: Any, model: Any, path: str, depth: int) -> dict:
        out: dict[str, Any] = {"resourceType": etree.QName(el).localname}
        # A resource's own id is an element (<id value="..."/>), not an attribute.
        self.attributes(el, path, allowed=())
        self.children(el, model, out, path, depth, is_resource=True)
        return out

    def attributes(self, el: Any, path: str, allowed: tuple[str, ...]) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, value in el.attrib.items():
            if name.startswith(f"{{{_XSI_NS}}}"):
                continue  # xsi:schemaLocation and friends say nothing about the content
            if name in allowed:
                found[name] = value
            else:
                self.add("structure", path, f"unknown attribute `{etree.QName(name).localname}`")
        return found

    def text(self, text: str | None, path: str) -> None:
        if text and text.strip():
            self.add("structure", path, f"text is not allowed here: `{text.strip()[:40]}`")

    def children(
        self, el: Any, model: Any, out: dict, path: str, depth: int, is_resource: bool
    ) -> None:
        if depth > MAX_DEPTH:
            self.add("structure", path, f"nested more than {MAX_DEPTH} levels deep")
            return
        table = elements(model)
        self.text(el.text, path)
        counts: dict[str, int] = {}
        for child in el:
            if len(self.issues) >= MAX_ISSUES:
                return
            self.text(child.tail, path)
            if not isinstance(child.tag, str):
                if isinstance(child, etree._Entity):
                    self.add("structure", path, "entity references are not allowed")
                continue  # comments: JSON has no place for them
            qname = etree.QName(child)
            name = qname.localname
            info = table.get(name)
            if info is not None and info.type == "xhtml":
                if child.tag != f"{{{XHTML_NS}}}div":
                    self.add("structure", f"{path}.{name}", f"must be a <div> in {XHTML_NS}")
                elif name in out:
                    self.add("structure", f"{path}.{name}", "appears more than once")
                else:
                    out[name] = _xhtml_string(child)
                continue
            if qname.namespace != FHIR_NS:
                self.add("structure", f"{path}.{name}", f"is not in the namespace {FHIR_NS}")
                continue
            if info is None or (not is_resource and name == "id"):
                # Element.id and Extension.url are attributes in XML.
                self.add("structure", f"{path}.{name}", "unknown element")
                continue
            if _is_extension(model) and name == "url":
                self.add("structure", f"{path}.url", "Extension.url is an attribute in XML")
                continue
            index = counts.get(name, 0)
            counts[name] = index + 1
            where = f"{path}.{name}[{index}]" if info.many else f"{path}.{name}"
            if not info.many and index:
                self.add("structure", where, "appears more than once, but does not repeat")
                continue
            if info.primitive:
                self.primitive(child, info, where, depth, out)
            elif info.type == "Resource":
                value = self.contained(child, where, depth)
                if value is not None:
                    _put(out, info, value)
            else:
                value = self.complex(child, info.model, where, depth + 1)
                if value is not None:
                    _put(out, info, value)
        # ``_given: [null, null]`` says nothing: drop extension arrays without extensions.
        for name in counts:
            ext = out.get("_" + name)
            if isinstance(ext, list) and all(e is None for e in ext):
                del out["_" + name]

    def complex(self, el: Any, model: Any, path: str, depth: int) -> dict | None:
        allowed = ("id", "url") if _is_extension(model) else ("id",)
        before = len(self.issues)
        out: dict[str, Any] = dict(self.attributes(el, path, allowed))
        self.children(el, model, out, path, depth, is_resource=False)
        if not out and len(self.issues) == before:  # not when its children were refused
            self.add(
                "structure", path, "an element must have content (http://hl7.org/fhir/R4/xml.html)"
            )
            return None
        return out

    def contained(self, el: Any, path: str, depth: int) -> dict | None:
        # contained, Bundle.entry.resource, ...: one resource element inside.
        self.attributes(el, path, allowed=())
        self.text(el.text, path)
        inner = [c for c in el if isinstance(c.tag, str)]
        if len(inner) != 1:
            self.add("structure", path, "must contain exactly one resource")
            return None
        self.text(inner[0].tail, path)
        qname = etree.QName(inner[0])
        model = resource_model(qname.localname) if qname.namespace == FHIR_NS else None
        if model is None:
            self.add("structure", path, f"<{qname.localname}> is not a known resource type")
            return None
        return self.resource(inner[0], model, path, depth + 1)

    def primitive(self, el: Any, info: ElementInfo, path: str, depth: int, out: dict) -> None:
        attrs = self.attributes(el, path, allowed=("value", "id"))
        self.text(el.text, path)
        ext: dict[str, Any] = {}
        if "id" in attrs:
            ext["id"] = attrs["id"]
        extension_model = elements(primitive_extension_model())["extension"].model
        for child in el:
            self.text(child.tail, path)
            if not isinstance(child.tag, str):
                continue
            if child.tag != f"{_F}extension":
                name = etree.QName(child).localname
                self.add("structure", path, f"<{name}> is not allowed in a primitive element")
                continue
            index = len(ext.get("extension", ()))
            value = self.complex(child, extension_model, f"{path}.extension[{index}]", depth + 1)
            if value is not None:
                ext.setdefault("extension", []).append(value)
        raw = attrs.get("value")
        value = None if raw is None else self.convert(raw, info, path)
        if raw is None and not ext:
            self.add("structure", path, "has neither a value nor extensions")
            return
        if info.many:
            out.setdefault(info.name, []).append(value)
            out.setdefault("_" + info.name, []).append(ext or None)
        else:
            if value is not None:
                out[info.name] = value
            if ext:
                out["_" + info.name] = ext

    def convert(self, raw: str, info: ElementInfo, path: str) -> Any:
        """The JSON value of an XML ``value`` attribute (http://hl7.org/fhir/R4/json.html#primitive)."""
        kind = info.type
        if kind == "boolean":
            if raw in ("true", "false"):
                return raw == "true"
            self.add("value", path, f"`{raw[:40]}` is not a boolean (true or false)")
        elif kind in _INTEGER_TYPES:
            if _INTEGER.fullmatch(raw) and len(raw) <= 20:
                return int(raw)
            self.add("value", path, f"`{raw[:40]}` is not an integer")
        elif kind == "decimal":
            if _DECIMAL.fullmatch(raw) and len(raw) <= _MAX_DECIMAL_CHARS:
                # As fhirserver.resources.jsonio reads JSON numbers: the
                # precision of a decimal is part of its value (1.50 is not 1.5).
                if any(c in raw for c in ".eE") or len(raw.lstrip("-")) > 18:
                    return Decimal(raw)
                return int(raw)
            self.add("value", path, f"`{raw[:40]}` is not a decimal")
        else:
            return raw
        return None


def _is_extension(model: Any) -> bool:
    """True for the Extension model, whose ``url`` is an XML attribute."""
    return model.get_resource_type() == "Extension"


def _put(out: dict, info: ElementInfo, value: Any) -> None:
    if info.many:
        out.setdefault(info.name, []).append(value)
    else:
        out[info.name] = value


def _xhtml_copy(el: Any) -> Any:
    # A copy of the narrative with XHTML as the default namespace and nothing
    # inherited from the FHIR document (xmlns:xsi, a prefix such as h:div),
    # which is how the JSON form writes it (narrative.html#xhtml).
    new = etree.Element(el.tag, attrib=dict(el.attrib), nsmap={None: XHTML_NS})
    new.text = el.text
    for child in el:
        if isinstance(child.tag, str):
            copied = _xhtml_copy(child)
        elif isinstance(child, etree._Comment):
            copied = etree.Comment(child.text)
        else:
            continue  # processing instructions are removed by the parser anyway
        copied.tail = child.tail
        new.append(copied)
    return new


def _xhtml_string(el: Any) -> str:
    return etree.tostring(_xhtml_copy(el), encoding="unicode", with_tail=False)


# --------------------------------------------------------------------------
# JSON -> XML
# --------------------------------------------------------------------------


def to_xml(resource: dict, pretty: bool = False) -> bytes:
    """The FHIR XML form of a resource in its JSON form (http://hl7.org/fhir/R4/xml.html).

    ``resource`` is JSON the server has validated or built itself (a stored
    resource, a Bundle, an OperationOutcome, the CapabilityStatement): elements
    are written in specification order, element ids and Extension.url as
    attributes, primitives' extensions inside their element, contained
    resources inside their wrapper element, the narrative as XHTML.
    Elements the R4B definitions do not know are left out.
    """
    narratives: list[tuple[Any, str]] = []
    root = _write_resource(None, resource, narratives)
    if pretty:
        # Indent before the narratives go in: whitespace added inside XHTML
        # would change the narrative (lxml's pretty_print would do just that).
        etree.indent(root, space="  ")
    for placeholder, div in narratives:
        xhtml = etree.fromstring(div.encode("utf-8"), hardened_xml_parser())
        xhtml.tail = placeholder.tail
        placeholder.getparent().replace(placeholder, xhtml)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


_Narratives = list[tuple[Any, str]]


def _write_resource(parent: Any, data: Any, narratives: _Narratives) -> Any:
    rtype = data.get("resourceType") if isinstance(data, dict) else None
    model = resource_model(rtype) if isinstance(rtype, str) else None
    if model is None or not isinstance(rtype, str):
        # Only server-made or validated JSON reaches here: this is a bug, not bad input.
        raise ValueError(f"to_xml: {type(data).__name__} `{rtype}` is not a FHIR resource")
    if parent is None:
        el = etree.Element(_F + rtype, nsmap={None: FHIR_NS})
    else:
        el = etree.SubElement(parent, _F + rtype)
    _write_children(el, data, model, True, narratives)
    return el


def _write_children(
    el: Any, data: dict, model: Any, is_resource: bool, narratives: _Narratives
) -> None:
    for name, info in elements(model).items():
        value = data.get(name)
        ext = data.get("_" + name) if info.primitive else None
        if value is None and ext is None:
            continue
        if not is_resource and (name == "id" or (name == "url" and _is_extension(model))):
            continue  # written as attributes by _write_complex
        if info.type == "xhtml":
            if isinstance(value, str):
                narratives.append((etree.SubElement(el, f"{{{XHTML_NS}}}div"), value))
        elif info.primitive:
            if info.many:
                values = value if isinstance(value, list) else [None] * len(ext or ())
                exts = ext if isinstance(ext, list) else []
                for i, item in enumerate(values):
                    ext_i = exts[i] if i < len(exts) else None
                    _write_primitive(el, name, item, ext_i, narratives)
            else:
                _write_primitive(el, name, value, ext, narratives)
        else:
            for item in value if isinstance(value, list) else [value]:
                if info.type == "Resource":
                    # Raises for a stored body still wrapped in an orjson.Fragment:
                    # resolve those first (jsonio.loads(jsonio.dumps(...))).
                    _write_resource(etree.SubElement(el, _F + name), item, narratives)
                elif isinstance(item, dict):
                    _write_complex(el, name, item, info.model, narratives)


def _write_complex(parent: Any, name: str, data: dict, model: Any, narratives: _Narratives) -> None:
    el = etree.SubElement(parent, _F + name)
    if isinstance(data.get("id"), str):
        el.set("id", data["id"])
    if _is_extension(model) and isinstance(data.get("url"), str):
        el.set("url", data["url"])
    _write_children(el, data, model, False, narratives)


def _write_primitive(parent: Any, name: str, value: Any, ext: Any, narratives: _Narratives) -> None:
    if value is None and not ext:
        return
    el = etree.SubElement(parent, _F + name)
    if isinstance(ext, dict) and isinstance(ext.get("id"), str):
        el.set("id", ext["id"])
    if value is not None:
        el.set("value", _xml_value(value))
    if isinstance(ext, dict):
        extension_model = elements(primitive_extension_model())["extension"].model
        for item in ext.get("extension") or ():
            if isinstance(item, dict):
                _write_complex(el, "extension", item, extension_model, narratives)


def _xml_value(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, float):
        # The JSON spelling of the number (1e-07 is 1e-7), as the JSON form has it.
        return orjson.dumps(value).decode()
    # A Decimal keeps the digits it was written with (str(Decimal("1.50")) is 1.50).
    return str(value)


__all__ = ["FHIR_NS", "parse_xml", "to_xml"]
