"""Validation of a resource in its JSON form, against the fhir.resources R4B models.

http://hl7.org/fhir/R4/validation.html: a server checks structure, cardinality,
value domains and invariants before it accepts a resource. Here that happens in
two passes over the client's JSON:

1. a typed walk guided by the model metadata (:func:`elements`) that checks the
   JSON representation rules the pydantic models let through in lax mode
   (http://hl7.org/fhir/R4/json.html: no nulls, no empty objects or arrays,
   booleans and numbers as JSON booleans and numbers, arrays exactly where the
   element repeats, one type of a choice element, id rules, a safe narrative),
   and reports unknown elements with their FHIRPath;
2. ``model_validate`` of the R4B model for everything else (value regexes,
   required elements, invariants the models implement) — unless a second,
   cheaper walk (:func:`model_would_accept`) proves from the same model
   metadata and the models' own value patterns that the model accepts the
   JSON: then building the model decides nothing. Anything that proof does not
   cover (a primitive's ``_name`` sibling, a contained resource, an unusual
   value) still goes through the model, which also words every error.

The input dict is returned unchanged: the server stores the client's JSON,
never a model dump (a dump is ~2.5k/s per core, see docs/ARCHITECTURE.md).

:func:`elements` is also the one place other modules (``xml``, ``subset``)
learn the element table of a model class from.
"""

from __future__ import annotations

import datetime
import importlib
import re
import threading
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from types import MappingProxyType, UnionType
from typing import Any, cast

from annotated_types import Ge, Le, MaxLen
from fhir.resources.R4B import get_fhir_model_class
from fhir_core import constraints as fhir_constraints
from fhir_core import types as fhir_types
from fhir_core.constraints import FHIR_TYPES_MAPS
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from fhir_core.utils import get_fhir_type_name, is_list_type, is_primitive_type
from lxml import etree
from pydantic import ValidationError

from fhirserver.errors import BadRequest, FhirError, Issue, Unprocessable
from fhirserver.resources.registry import is_resource_type, model_class

# http://hl7.org/fhir/R4/datatypes.html#id: 1-64 of [A-Za-z0-9\-\.]. The model
# only checks the characters (and allows 255 of them), so the length is ours.
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")

XHTML_NS = "http://www.w3.org/1999/xhtml"

# Deeper than any real resource (QuestionnaireResponse items nest deepest), and
# shallow enough that neither this walk nor pydantic's recursion can overflow.
MAX_DEPTH = 100
# An OperationOutcome listing thousands of issues helps nobody and costs memory.
MAX_ISSUES = 100

_VERSION_PREFIX = "R4."  # fhir_core's key for the R4B models in its type maps

_INTEGER_TYPES = frozenset({"integer", "unsignedInt", "positiveInt", "integer64"})
_RESOURCE = "Resource"  # the FHIR type of contained, Bundle.entry.resource, ...


def is_valid_id(s: str) -> bool:
    """True if ``s`` is a valid logical id (http://hl7.org/fhir/R4/datatypes.html#id)."""
    return isinstance(s, str) and ID_PATTERN.fullmatch(s) is not None


# --------------------------------------------------------------------------
# Element tables from the models
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ElementInfo:
    """One element of a FHIR type, as the R4B model declares it."""

    name: str  # the JSON name (model alias), e.g. ``birthDate``, ``valueQuantity``
    many: bool  # max cardinality ``*``: a JSON array
    primitive: bool  # a FHIR primitive: has a ``_name`` sibling in JSON
    type: str  # FHIR type code: ``string``, ``HumanName``, ``Resource``, ``xhtml``, ...
    model: Any  # the model class of a complex type, else None
    summary: bool  # ElementDefinition.isSummary
    required: bool  # min cardinality >= 1 (for a choice: one of its types is)
    choice: str | None  # the ``value`` of ``value[x]`` for a choice type element


def _complex_model(annotation: Any) -> Any:
    # The generated models annotate complex elements with fhir_core "XType"
    # validators (possibly inside List[...] | None); each knows its model class.
    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        return annotation.get_model_klass()
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _complex_model(arg)
        if found is not None:
            return found
    return None


@cache
def elements(model: Any) -> Mapping[str, ElementInfo]:
    """The elements of a model class by JSON name, in specification order.

    Built once per class from what fhir.resources stores on each field:
    ``json_schema_extra`` (``element_property``, ``summary_element_property``,
    ``element_required``, ``one_of_many``, ``one_of_many_required``), the
    pydantic requiredness and the annotation (list or not, primitive or not).
    """
    aliases = model.get_alias_mapping()
    table: dict[str, ElementInfo] = {}
    for name in model.elements_sequence():
        field = model.model_fields[aliases[name]]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        primitive = is_primitive_type(field)
        type_name = get_fhir_type_name(field, prefix=_VERSION_PREFIX)
        table[name] = ElementInfo(
            name=name,
            many=is_list_type(field),
            primitive=primitive,
            type=type_name,
            model=None if primitive else _complex_model(field.annotation),
            summary=bool(extra.get("summary_element_property", False)),
            required=bool(
                field.is_required()
                or extra.get("element_required", False)
                or extra.get("one_of_many_required", False)
            ),
            choice=extra.get("one_of_many"),
        )
    return MappingProxyType(table)


@cache
def resource_model(name: str) -> Any:
    """The R4B model of a concrete resource type, or None.

    Unlike ``registry.model_class`` this also answers for types the server does
    not store (``Parameters`` inside a Bundle, ``OperationOutcome`` in
    ``Bundle.entry.response.outcome``) and refuses datatypes and the abstract
    ``Resource``/``DomainResource``, which ``get_fhir_model_class`` would return.
    """
    if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", name) or name in ("Resource", "DomainResource"):
        return None
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError, AttributeError, ImportError):
        return None
    return model if model.has_resource_base() else None


@cache
def primitive_extension_model() -> Any:
    """The model of a primitive's ``_name`` sibling: its id and extensions
    (http://hl7.org/fhir/R4/json.html#primitive)."""
    return get_fhir_model_class("FHIRPrimitiveExtension")


# --------------------------------------------------------------------------
# Narrative XHTML (http://hl7.org/fhir/R4/narrative.html#xhtml)
# --------------------------------------------------------------------------

_local = threading.local()


def hardened_xml_parser() -> etree.XMLParser:
    """An lxml parser that never resolves entities, reads DTDs or touches the network.

    http://hl7.org/fhir/R4/security.html#input: XML external entities and
    entity expansion (billion laughs) are the classic XML attacks. lxml parsers
    are not thread-safe, so each thread gets its own.
    """
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            remove_pis=True,
        )
        _local.parser = parser
    return parser


# txt-1: only basic HTML formatting, no active content. Listing what is refused
# (rather than what is allowed) keeps real-world narratives (u, font, center...)
# valid while refusing everything that runs code or loads content in a browser.
_FORBIDDEN_XHTML = frozenset(
    {
        "script", "style", "object", "embed", "iframe", "frame", "frameset",
        "applet", "form", "input", "button", "select", "textarea", "base",
        "link", "meta", "head", "body", "html", "title", "noscript", "param",
    }
)  # fmt: skip
_ACTIVE_URL = re.compile(r"^\s*(javascript|vbscript)\s*:", re.IGNORECASE)


def xhtml_problem(div: str) -> str | None:
    """Why ``div`` is not an acceptable Narrative.div, or None if it is (txt-1..txt-3)."""
    if "<!DOCTYPE" in div or "<!ENTITY" in div:
        return "the narrative must not contain a DOCTYPE or entity declarations"
    try:
        root = etree.fromstring(div.encode("utf-8"), hardened_xml_parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        return f"the narrative is not well-formed XHTML ({exc})"
    if root.tag != f"{{{XHTML_NS}}}div":
        return f"the narrative must be a <div> in the namespace {XHTML_NS}"
    for node in root.iter():
        if not isinstance(node.tag, str):
            # Comments are harmless; an unresolved entity reference is not XHTML.
            if isinstance(node, etree._Entity):
                return "the narrative must not contain entity references"
            continue
        qname = etree.QName(node)
        if qname.namespace != XHTML_NS:
            return f"the narrative must only contain XHTML elements, not <{qname.localname}>"
        if qname.localname in _FORBIDDEN_XHTML:
            return f"the narrative must not contain <{qname.localname}> (txt-1)"
        for attr, value in node.attrib.items():
            local = etree.QName(attr).localname.lower()
            if local.startswith("on"):
                return f"the narrative must not contain event handler attributes ({local}, txt-1)"
            if local in ("href", "src") and _ACTIVE_URL.match(value):
                return "the narrative must not contain script URLs (txt-1)"
    if not "".join(root.itertext()).strip() and root.find(f".//{{{XHTML_NS}}}img") is None:
        return "the narrative must have some non-whitespace content (txt-2)"
    return None


# --------------------------------------------------------------------------
# Pass 1: the typed walk over the JSON
# --------------------------------------------------------------------------


def json_kind(value: object) -> str:
    """The JSON kind of a value, with its article, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# http://hl7.org/fhir/R4/datatypes.html#string: no characters below U+0020
# other than tab, CR and LF (XML could not even carry them).
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _fhir_string(value: object) -> bool:
    return isinstance(value, str) and value != "" and _CONTROL.search(value) is None


def _finite_decimal(value: object) -> bool:
    return isinstance(value, Decimal) and value.is_finite()


# http://hl7.org/fhir/R4/json.html#primitive: booleans and numbers are JSON
# booleans and numbers, every other primitive a JSON string (never empty).
# The models would quietly coerce "yes" to true or "3" to 3.
_PRIMITIVE_OK: dict[str, Any] = {
    "boolean": lambda v: v is True or v is False,
    "integer": lambda v: type(v) is int,
    "unsignedInt": lambda v: type(v) is int,
    "positiveInt": lambda v: type(v) is int,
    "integer64": lambda v: type(v) is int,
    # fhirserver.resources.jsonio reads decimals as Decimal to keep their precision.
    "decimal": lambda v: type(v) is int or type(v) is float or _finite_decimal(v),
    "xhtml": lambda v: _fhir_string(v) and xhtml_problem(v) is None,
}


class _Walk:
    """Collects issues while walking a resource's JSON with its element tables.

    This runs on every write before the model does, so it is kept lean: plain
    type() checks, messages built only for failures.
    """

    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, code: str, path: str, text: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue(code=code, diagnostics=f"{path}: {text}", expression=(path,)))

    def resource(self, data: dict, model: Any, path: str, depth: int) -> None:
        if "id" in data and not is_valid_id(data["id"]):
            self.add(
                "value",
                f"{path}.id",
                f"`{str(data['id'])[:80]}` is not a valid id "
                "(1-64 characters of A-Z, a-z, 0-9, '-' and '.')",
            )
        self.element(data, model, path, depth, is_resource=True)

    def element(
        self, data: dict, model: Any, path: str, depth: int, is_resource: bool = False
    ) -> None:
        if depth > MAX_DEPTH:
            self.add("structure", path, f"nested more than {MAX_DEPTH} levels deep")
            return
        if len(self.issues) >= MAX_ISSUES:
            return
        table = elements(model)
        choices: dict[str, str] | None = None
        for key, value in data.items():
            info = table.get(key)
            if info is None:
                if key == "resourceType" and is_resource:
                    continue
                if isinstance(key, str) and key.startswith("_"):
                    self.primitive_extension(data, key, value, table, path, depth)
                else:
                    self.add("structure", f"{path}.{key}", "unknown element")
                continue
            if info.choice is not None:
                choices = choices if choices is not None else {}
                if info.choice in choices:
                    self.add(
                        "invariant",
                        f"{path}.{info.choice}[x]",
                        f"only one of {choices[info.choice]} and {key} may be present",
                    )
                choices[info.choice] = key
            if value is None:
                self.add("structure", f"{path}.{key}", "null is not allowed; leave it out instead")
            elif info.many:
                if not isinstance(value, list):
                    self.add(
                        "structure", f"{path}.{key}", f"must be an array, not {json_kind(value)}"
                    )
                elif not value:
                    self.add("structure", f"{path}.{key}", "an empty array is not allowed")
                elif info.primitive:
                    ext = data.get("_" + key)
                    for i, item in enumerate(value):
                        if item is None:
                            # A null only holds the place of a value that has
                            # just an extension in the ``_name`` array
                            # (http://hl7.org/fhir/R4/json.html#primitive).
                            if not (isinstance(ext, list) and i < len(ext) and ext[i] is not None):
                                self.add("structure", f"{path}.{key}[{i}]", "null is not allowed")
                        elif not _PRIMITIVE_OK.get(info.type, _fhir_string)(item):
                            self.bad_primitive(item, info, f"{path}.{key}[{i}]")
                else:
                    for i, item in enumerate(value):
                        self.complex(item, info, f"{path}.{key}[{i}]", depth)
            elif isinstance(value, list):
                self.add("structure", f"{path}.{key}", "must be a single value, not an array")
            elif info.primitive:
                if not _PRIMITIVE_OK.get(info.type, _fhir_string)(value):
                    self.bad_primitive(value, info, f"{path}.{key}")
            else:
                self.complex(value, info, f"{path}.{key}", depth)

    def complex(self, value: object, info: ElementInfo, path: str, depth: int) -> None:
        if not isinstance(value, dict):
            self.add("structure", path, f"must be a JSON object, not {json_kind(value)}")
        elif not value:
            self.add("structure", path, "an empty object is not allowed")
        elif info.type == _RESOURCE:
            rtype = value.get("resourceType")
            model = resource_model(rtype) if isinstance(rtype, str) else None
            if model is None:
                self.add("structure", path, f"`{str(rtype)[:80]}` is not a known resourceType")
            else:
                self.resource(value, model, path, depth + 1)
        else:
            self.element(value, info.model, path, depth + 1)

    def bad_primitive(self, value: object, info: ElementInfo, path: str) -> None:
        kind = json_kind(value)
        if info.type == "boolean":
            self.add("value", path, f"must be a JSON boolean (true or false), not {kind}")
        elif info.type in _INTEGER_TYPES:
            self.add("value", path, f"must be a JSON integer, not {kind} `{str(value)[:40]}`")
        elif info.type == "decimal":
            self.add("value", path, f"must be a JSON number, not {kind}")
        elif not isinstance(value, str):
            self.add("value", path, f"must be a JSON string ({info.type}), not {kind}")
        elif not value:
            self.add("value", path, "an empty string is not allowed; leave the element out")
        elif _CONTROL.search(value):
            self.add("value", path, "contains control characters, which FHIR strings must not")
        else:
            self.add("value", path, xhtml_problem(value) or "invalid XHTML")

    def primitive_extension(
        self,
        data: dict,
        key: str,
        value: object,
        table: Mapping[str, ElementInfo],
        path: str,
        depth: int,
    ) -> None:
        # ``_birthDate`` carries the id and extensions of ``birthDate``
        # (http://hl7.org/fhir/R4/json.html#primitive); its FHIRPath is the
        # element's own path.
        info = table.get(key[1:])
        where = f"{path}.{key[1:]}"
        if info is None or not info.primitive:
            self.add("structure", f"{path}.{key}", "unknown element")
            return
        if info.many:
            if not isinstance(value, list) or not value:
                self.add("structure", where, f"`{key}` must be a non-empty array")
                return
            values = data.get(key[1:])
            if isinstance(values, list) and len(values) != len(value):
                self.add("structure", where, f"`{key}` must have as many items as `{key[1:]}`")
            for i, item in enumerate(value):
                if item is not None:
                    self.extension_object(item, f"{where}[{i}]", depth)
        else:
            self.extension_object(value, where, depth)

    def extension_object(self, value: object, path: str, depth: int) -> None:
        if not isinstance(value, dict):
            self.add(
                "structure", path, f"its `_` object must be a JSON object, not {json_kind(value)}"
            )
        elif not value:
            self.add("structure", path, "an empty object is not allowed")
        else:
            self.element(value, primitive_extension_model(), path, depth + 1)


# --------------------------------------------------------------------------
# Pass 2 shortcut: proving that the model would accept the JSON
# --------------------------------------------------------------------------
#
# Building the R4B model was most of validate_resource's cost (measured on the
# Synthea load: 0.30 ms of 0.33 ms per resource, fhir_core running several
# Python validators for each of the ~18 element objects of a resource). For
# JSON the walk accepted, what the model checks beyond the walk is: each
# primitive value against its fhir_core type (pattern, bounds, calendar),
# required elements, required choices (``value[x]``), the same in each nested
# element, and validators of its own (none but fhir_core's base ones today).
# model_would_accept checks exactly these, from the same metadata and with the
# fhir_core types' own patterns where they are Python ones, but only in the
# forms it can decide for sure; for anything else it says False and the model
# decides, as before.

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CODE_ASCII = re.compile(r"[!-~]+(?: [!-~]+)*")
_ID_CHARS = re.compile(r"[A-Za-z0-9\-.]+")
_ID_PATTERN_DEFAULT = r"^[A-Za-z0-9\-.]+$"
# The full-precision forms (fraction of at most 9 digits: pydantic parses
# longer ones too, but nothing needs them and this stays on proven ground).
_DATE_TIME_PARTS = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2}))?"
)
_TIME_PARTS = re.compile(r"[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?")

_Check = Callable[[Any], bool]


def _no_surrogate(value: str) -> bool:
    # pydantic-core refuses a str holding a lone surrogate (json.loads makes
    # one of a "\ud800" escape) for the pattern-checked string types.
    return value.isascii() or _SURROGATE.search(value) is None


def _string_ok(value: object) -> bool:
    # fhir_core's String pattern ``[ \r\n\t\S]+`` is searched, not anchored:
    # one character that is not whitespace matches it (every Unicode
    # White_Space character is str.isspace(), so ``not isspace()`` finds one).
    return type(value) is str and value != "" and not value.isspace() and _no_surrogate(value)


def _any_string_ok(value: object) -> bool:
    # uri, canonical (pattern ``\S*``, searched: always matches), url,
    # markdown (``\s*(\S|\s)*``), xhtml (no pattern; the walk checks the XHTML).
    return type(value) is str and _no_surrogate(value)


def _code_ok(value: object) -> bool:
    # A subset of fhir_core's ``^[^\s]+(\s[^\s]+)*$``: printable ASCII words, single spaces.
    return type(value) is str and _CODE_ASCII.fullmatch(value) is not None


def _boolean_ok(value: object) -> bool:
    return value is True or value is False


def _decimal_ok(value: object) -> bool:
    # fhir_core's Decimal validator checks str(value) against its pattern, then
    # makes a decimal.Decimal of it (which cannot fail for these types).
    kind = type(value)
    return (kind is int or kind is float or kind is Decimal) and (
        fhir_types.Decimal.pattern.fullmatch(str(value)) is not None
    )


def _valid_date(match: re.Match) -> bool:
    try:
        datetime.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return False
    return True


def _date_ok(value: object) -> bool:
    # fhir_core: the Date pattern; YYYY and YYYY-MM are kept as strings (the
    # pattern allows months 01-12 only); a full date must be a calendar date.
    if type(value) is not str or fhir_types.Date.pattern.fullmatch(value) is None:
        return False
    if len(value) < 10:
        return True
    match = _DATE_TIME_PARTS.fullmatch(value)
    return match is not None and _valid_date(match)


def _date_time_ok(value: object, pattern: re.Pattern = fhir_types.DateTime.pattern) -> bool:
    # fhir_core: the DateTime (Instant) pattern (hours 00-23, minutes and
    # seconds 00-59, or a leap second, which it checks as 59; a zone with a
    # time), then a calendar date.
    if type(value) is not str or pattern.fullmatch(value) is None:
        return False
    if len(value) < 10:
        return True  # YYYY or YYYY-MM, kept as strings
    match = _DATE_TIME_PARTS.fullmatch(value)
    return match is not None and _valid_date(match)


def _instant_ok(value: object) -> bool:
    return _date_time_ok(value, fhir_types.Instant.pattern)


def _time_ok(value: object) -> bool:
    return (
        type(value) is str
        and fhir_types.Time.pattern.fullmatch(value) is not None
        and _TIME_PARTS.fullmatch(value) is not None
    )


def _oid_ok(value: object) -> bool:
    return (
        type(value) is str
        and value.isascii()
        and fhir_types.Oid.pattern.fullmatch(value) is not None
    )


def _integer_check(annotation: Any) -> _Check | None:
    low = high = None
    for group in typing.get_args(annotation)[1:]:
        for item in group if isinstance(group, Iterable) else (group,):
            if isinstance(item, Ge) and isinstance(item.ge, int):
                low = item.ge
            elif isinstance(item, Le) and isinstance(item.le, int):
                high = item.le
            else:
                return None
    if low is None or high is None:
        return None
    return lambda value: type(value) is int and low <= value <= high


def _id_check() -> _Check | None:
    # The Id type reads its pattern and length from fhir_core.constraints
    # (settable before the models are built): only the defaults are known here.
    if getattr(fhir_constraints, "TYPES_ID_PATTERN", None) != _ID_PATTERN_DEFAULT:
        return None
    limit = next((m.max_length for m in fhir_types.Id() if isinstance(m, MaxLen)), None)
    if not isinstance(limit, int):
        return None
    return lambda value: (
        type(value) is str and len(value) <= limit and _ID_CHARS.fullmatch(value) is not None
    )


def _primitive_checks() -> list[tuple[Any, _Check | None]]:
    # Matched by equality with the field annotations of the models (the
    # fhirtypes of fhir.resources are these very aliases). uuid (pydantic's
    # UUID4) and base64Binary are left to the model.
    return [
        (fhir_types.BooleanType, _boolean_ok),
        (fhir_types.StringType, _string_ok),
        (fhir_types.CodeType, _code_ok),
        (fhir_types.IdType, _id_check()),
        (fhir_types.DecimalType, _decimal_ok),
        (fhir_types.IntegerType, _integer_check(fhir_types.IntegerType)),
        (fhir_types.Integer64Type, _integer_check(fhir_types.Integer64Type)),
        (fhir_types.UnsignedIntType, _integer_check(fhir_types.UnsignedIntType)),
        (fhir_types.PositiveIntType, _integer_check(fhir_types.PositiveIntType)),
        (fhir_types.UriType, _any_string_ok),
        (fhir_types.CanonicalType, _any_string_ok),
        (fhir_types.UrlType, _any_string_ok),
        (fhir_types.MarkdownType, _any_string_ok),
        (fhir_types.XhtmlType, _any_string_ok),
        (fhir_types.OidType, _oid_ok),
        (fhir_types.DateType, _date_ok),
        (fhir_types.DateTimeType, _date_time_ok),
        (fhir_types.InstantType, _instant_ok),
        (fhir_types.TimeType, _time_ok),
    ]


def _unwrap(annotation: Any) -> Any:
    """The one type inside ``X | None`` / ``List[X | None] | None``, or None when there are several."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return annotation
    if origin is typing.Union or origin is UnionType or origin is list:
        inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _unwrap(inner[0]) if len(inner) == 1 else None
    return annotation


def _primitive_check(annotation: Any) -> _Check | None:
    inner = _unwrap(annotation)
    if inner is None:
        return None
    for known, check in _PRIMITIVE_CHECKS:
        if inner == known:
            return check
    return None


def _plain_complex(annotation: Any) -> bool:
    """A complex element that fhir_core validates with its element model, and nothing else."""
    inner = _unwrap(annotation)
    return (
        isinstance(inner, type)
        and issubclass(inner, FhirBase)
        and not issubclass(inner, FhirElementOrResourceBase)
        and _function(inner.fhir_model_validator) is _function(FhirBase.fhir_model_validator)
        and _function(inner.__get_pydantic_core_schema__)
        is _function(FhirBase.__get_pydantic_core_schema__)
    )


@dataclass(frozen=True, slots=True)
class _AnyResource:
    """A ``Resource`` element (``contained``, ``Bundle.entry.resource``): fhir_core picks
    the model by the JSON's resourceType through its type map."""

    prefix: str  # the version's key prefix in that map

    def model_of(self, value: dict) -> Any:
        name = value.get("resourceType")
        path = FHIR_TYPES_MAPS.get(f"{self.prefix}{name}Type") if type(name) is str else None
        model = _import_model(path) if path is not None else None
        return model if model is not None and model.has_resource_base() else None


@cache
def _import_model(path: str) -> Any:
    """The class at ``module.Name`` (what fhir_core's import_string does with the map's value)."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _any_resource(annotation: Any) -> _AnyResource | None:
    inner = _unwrap(annotation)
    if (
        isinstance(inner, type)
        and issubclass(inner, FhirElementOrResourceBase)
        and _function(inner.fhir_model_validator)
        is _function(FhirElementOrResourceBase.fhir_model_validator)
        and _function(inner.__get_pydantic_core_schema__)
        is _function(FhirBase.__get_pydantic_core_schema__)
        and inner.get_model_klass().__name__ == _RESOURCE
        and isinstance(getattr(inner, "_prefix", None), str)
    ):
        return _AnyResource(inner._prefix)
    return None


def _function(value: Any) -> Any:
    return getattr(value, "__func__", value)


def _only_base_validators(model: Any) -> bool:
    """True when a model validates with FHIRAbstractModel's machinery alone."""
    decorators, base = model.__pydantic_decorators__, FHIRAbstractModel.__pydantic_decorators__
    if (
        decorators.validators
        or decorators.field_validators
        or decorators.root_validators
        or decorators.model_validators.keys() != base.model_validators.keys()
        or model.model_config.get("strict")
    ):
        return False
    if any(
        _function(decorators.model_validators[name].func)
        is not _function(base.model_validators[name].func)
        for name in base.model_validators
    ):
        return False
    return all(
        _function(getattr(model, name)) is _function(getattr(FHIRAbstractModel, name))
        for name in (
            "__init__",
            "model_post_init",
            "reject_null_complex_elements",
            "validate_after_model_construction",
            "_validate_one_of_many",
            "_validate_required_primitive_elements",
        )
    )


#: Per element: (repeats, check of a primitive value, model of a complex one or
#: _AnyResource); neither means "left to the model".
_ElementPlan = tuple[bool, _Check | None, Any]


@dataclass(frozen=True, slots=True)
class _AcceptancePlan:
    elements: dict[str, _ElementPlan]
    #: Elements that must be present (pydantic-required, or fhir_core's required primitives).
    required: tuple[str, ...]
    #: Choice groups of which one element must be present.
    one_of: tuple[tuple[str, ...], ...]
    #: The resourceType a resource's JSON carries (None for other elements).
    resource_type: str | None


@cache
def _acceptance_plan(model: Any) -> _AcceptancePlan | None:
    """What model_would_accept checks for one model class, or None to always leave it to the model."""
    try:
        if not _only_base_validators(model):
            return None
        aliases = model.get_alias_mapping()  # element name -> field name
        element_of = {field_name: name for name, field_name in aliases.items()}
        table = elements(model)
        plans: dict[str, _ElementPlan] = {}
        for name, info in table.items():
            field = model.model_fields[aliases[name]]
            annotation = field.annotation
            if field.metadata:
                # Constraints pydantic took off the annotation (a required
                # primitive's Annotated[...]): not what the checks here know.
                plans[name] = (info.many, None, None)
            elif info.primitive:
                plans[name] = (info.many, _primitive_check(annotation), None)
            elif info.type != _RESOURCE and info.model is not None and _plain_complex(annotation):
                plans[name] = (info.many, None, info.model)
            elif info.type == _RESOURCE:
                plans[name] = (info.many, None, _any_resource(annotation))
            else:
                plans[name] = (info.many, None, None)
        required: list[str] = []
        for field_name, field_info in model.model_fields.items():
            if field_info.is_required():
                required.append(element_of[field_name])  # KeyError: not an element
        instance = model.model_construct()
        for name, _ in instance.get_required_fields():
            if name not in aliases:
                return None
            required.append(name)
        one_of: list[tuple[str, ...]] = []
        for prefix, field_names in instance.get_one_of_many_fields().items():
            extra = model.model_fields[field_names[0]].json_schema_extra
            if not isinstance(extra, dict) or extra.get("one_of_many") != prefix:
                return None
            if extra["one_of_many_required"] is True:
                one_of.append(tuple(element_of[field_name] for field_name in field_names))
        resource_type = model.get_resource_type() if model.has_resource_base() else None
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    return _AcceptancePlan(plans, tuple(required), tuple(one_of), resource_type)


def model_would_accept(data: dict, model: Any) -> bool:
    """True only if ``model.model_validate(data)`` would succeed, for JSON the walk accepted.

    False means "not proven": the caller then runs the model, which decides.
    """
    plan = _acceptance_plan(model)
    if plan is None:
        return False
    for name in plan.required:
        if name not in data:
            return False
    for names in plan.one_of:
        if not any(name in data for name in names):
            return False
    elements_plan = plan.elements
    for key, value in data.items():
        element = elements_plan.get(key)
        if element is None:
            if key == "resourceType" and value == plan.resource_type is not None:
                continue
            return False  # a ``_name`` sibling, an unknown key: the model's to judge
        many, check, submodel = element
        if many:
            if type(value) is not list or not value:
                return False
            if check is not None:
                for item in value:
                    if not check(item):
                        return False
            elif submodel is not None:
                for item in value:
                    if not _object_accepted(item, submodel):
                        return False
            else:
                return False
        elif check is not None:
            if not check(value):
                return False
        elif submodel is None or not _object_accepted(value, submodel):
            return False
    return True


def _object_accepted(value: object, model: Any) -> bool:
    if type(value) is not dict or not value:
        return False
    if type(model) is _AnyResource:
        model = model.model_of(value)
        if model is None:
            return False
    return model_would_accept(value, model)


_PRIMITIVE_CHECKS = _primitive_checks()


# --------------------------------------------------------------------------
# Pass 2: the model, and its errors as issues
# --------------------------------------------------------------------------

_PYDANTIC_PLAIN = {
    "extra_forbidden": "unknown element",
    "missing": "required element is missing",
    "model_field_validation.missing": "required element is missing",
    "string_type": "must be a string",
    "list_type": "must be an array",
    "json_invalid": "must be a JSON object",
    "model_validation_format": "must be a JSON object",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "base64_decode": "is not valid base64",
}
_ISSUE_CODE = {
    "extra_forbidden": "structure",
    "missing": "required",
    "model_field_validation.missing": "required",
    "json_invalid": "structure",
    "model_validation_format": "structure",
    "list_type": "structure",
}
_ELEMENT_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9]*")


def fhir_path(root: str, loc: tuple, data: object = None) -> str:
    """A FHIRPath-like location (``Patient.name[0].given[1]``) from a pydantic ``loc``.

    pydantic puts its own labels into ``loc`` (union members, ``function-after[...]``,
    fhir_core's ``root``). Walking ``data`` alongside tells the element names
    apart from those labels: a label is never a key of the client's JSON. A last
    part that is not in the data is kept when it looks like an element name: that
    is how a missing required element is reported.
    """
    parts = [root]
    node = data
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if isinstance(node, list) and 0 <= part < len(node):
                parts[-1] += f"[{part}]"
                node = node[part]
            elif node is None and data is None:
                parts[-1] += f"[{part}]"
            continue
        if not isinstance(part, str):
            continue
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif data is None and _ELEMENT_NAME.fullmatch(part) and part != "root":
            pass  # no JSON to compare with: keep what looks like an element name
        elif i == last and _ELEMENT_NAME.fullmatch(part) and part != "root":
            node = None
        else:
            continue
        # ``_birthDate`` is the extension side of ``birthDate``: same FHIRPath.
        parts.append(part[1:] if part.startswith("_") else part)
    return ".".join(parts)


def issues_from_validation_error(
    error: ValidationError, root: str, data: object = None
) -> list[Issue]:
    """One OperationOutcome issue per pydantic error, located by FHIRPath."""
    issues: list[Issue] = []
    for err in error.errors(include_url=False)[:MAX_ISSUES]:
        kind = str(err.get("type", ""))
        path = fhir_path(root, tuple(err.get("loc", ())), data)
        message = str(err.get("msg", "invalid value"))
        if kind == "value_error":
            # fhir_core raises plain ValueErrors ("Date value string does not
            # match spec regex."); pydantic prefixes them with "Value error, ".
            message = message.removeprefix("Value error, ")
        else:
            message = _PYDANTIC_PLAIN.get(kind, message)
        code = _ISSUE_CODE.get(kind, "value" if kind else "invalid")
        if kind == "value_error" and "expected from this list" in message:
            code = "invariant"  # a choice element with more than one type
        issues.append(Issue(code=code, diagnostics=f"{path}: {message}", expression=(path,)))
    return issues


def _unprocessable(rtype: str, issues: list[Issue]) -> Unprocessable:
    first = issues[0].diagnostics if issues else "invalid"
    more = f" (and {len(issues) - 1} more issues)" if len(issues) > 1 else ""
    return Unprocessable(f"The {rtype} resource is not valid: {first}{more}", issues=issues)


# --------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------


def resource_type_of(data: object, expected_type: str | None = None) -> str:
    """The stored resource type ``data`` claims to be, or BadRequest.

    http://hl7.org/fhir/R4/http.html#create: a body that is not a resource of a
    type the server stores (or not the type of the URL) is a 400.
    """
    if not isinstance(data, dict):
        raise BadRequest(
            f"The body must be a JSON object (a FHIR resource), not {json_kind(data)}.",
            issues=[
                Issue(
                    code="structure",
                    diagnostics=f"The body must be a JSON object, not {json_kind(data)}.",
                )
            ],
        )
    rtype = data.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        text = (
            "The resource has no `resourceType`."
            if rtype is None
            else f"`resourceType` must be the name of a resource type, not {json_kind(rtype)}."
        )
        raise BadRequest(
            text,
            issues=[Issue(code="required", diagnostics=text, expression=("resourceType",))],
        )
    if not is_resource_type(rtype):
        text = f"resourceType `{rtype[:80]}` is not a resource type this server supports."
        raise BadRequest(text, issues=[Issue(code="not-supported", diagnostics=text)])
    if expected_type is not None and rtype != expected_type:
        text = f"resourceType `{rtype}` does not match the URL type `{expected_type}`"
        raise BadRequest(
            text, issues=[Issue(code="invalid", diagnostics=text, expression=("resourceType",))]
        )
    return rtype


def validate_resource(data: object, expected_type: str | None = None) -> dict:
    """Check that ``data`` is a valid R4 resource; return it unchanged.

    http://hl7.org/fhir/R4/validation.html. Raises BadRequest (400) when ``data``
    is not a resource of a supported type or not of ``expected_type``, and
    Unprocessable (422) with one issue per problem, each located by FHIRPath
    (``Patient.name[0].given[0]``), when the resource breaks the R4 rules.
    Never raises anything but a FhirError, whatever ``data`` is.
    """
    rtype = resource_type_of(data, expected_type)
    resource = cast(dict, data)  # resource_type_of made sure
    walk = _Walk()
    model = model_class(rtype)
    try:
        walk.resource(resource, model, rtype, 0)
    except RecursionError:
        walk.add("structure", rtype, "the resource is nested too deeply")
    if walk.issues:
        raise _unprocessable(rtype, walk.issues)
    if model_would_accept(resource, model):
        return resource
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise _unprocessable(rtype, issues_from_validation_error(exc, rtype, resource)) from None
    except FhirError:
        raise
    except (RecursionError, ValueError, TypeError, KeyError, AttributeError) as exc:
        # The walk above should have caught what makes the models stumble;
        # anything left is still the client's resource being unusable.
        text = f"{rtype}: the resource could not be validated ({type(exc).__name__})"
        raise Unprocessable(
            text, issues=[Issue(code="structure", diagnostics=text, expression=(rtype,))]
        ) from None
    return resource
