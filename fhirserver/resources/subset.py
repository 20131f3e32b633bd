"""``_summary`` and ``_elements`` on a resource's JSON (http://hl7.org/fhir/R4/search.html#summary,
http://hl7.org/fhir/R4/search.html#elements).

These run on the read path, so they work on the stored JSON dicts directly and
never build a model: which elements are summary elements, which are mandatory
and what type each one has is read once per type from the R4B model classes
(:func:`fhirserver.resources.validate.elements`, cached) and then only looked up.

The result is a new dict; the input is never changed. Sub-objects that are kept
whole are shared with the input, so treat both as read-only (copying them would
cost as much as the read itself).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from fhirserver.errors import BadRequest, Issue
from fhirserver.resources.validate import ElementInfo, elements, resource_model

# http://hl7.org/fhir/R4/search.html#summary: a subsetted resource is marked so
# that nobody takes it for the whole resource (and, e.g., updates with it).
SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SUBSETTED_TAG = {"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}

SUMMARY_MODES = ("true", "text", "data", "false")

# Always kept by _summary=text and _elements (search.html#summary, #elements).
_ALWAYS = ("resourceType", "id", "meta")


_EMPTY: Mapping[str, ElementInfo] = MappingProxyType({})


def _table(rtype: object) -> Mapping[str, ElementInfo]:
    # An unknown type has no known elements: only what is always kept stays.
    model = resource_model(rtype) if isinstance(rtype, str) else None
    return elements(model) if model is not None else _EMPTY


def _in_summary(info: ElementInfo) -> bool:
    # Mandatory elements are summary elements by definition (ElementDefinition
    # .isSummary: min > 0 is always in the summary), and a modifier extension
    # must never be hidden from a reader, since it changes the meaning of what
    # is shown (http://hl7.org/fhir/R4/extensibility.html#modifierExtension).
    return info.summary or info.required or info.name == "modifierExtension"


def _summary_of(data: dict, table: Mapping[str, ElementInfo]) -> dict:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "resourceType":
            out[key] = value
            continue
        # A primitive's ``_name`` sibling follows its element (json.html#primitive).
        info = table.get(key[1:] if key.startswith("_") else key)
        if info is None or not _in_summary(info):
            continue
        if info.primitive or key.startswith("_"):
            out[key] = value
            continue
        # An element left with nothing in the summary goes: FHIR has no empty
        # objects or arrays (http://hl7.org/fhir/R4/json.html).
        if isinstance(value, list):
            items = [kept for kept in (_summary_item(item, info) for item in value) if kept]
            if items:
                out[key] = items
        else:
            kept = _summary_item(value, info)
            if kept:
                out[key] = kept
    return out


def _summary_item(value: Any, info: ElementInfo) -> Any:
    if not isinstance(value, dict):
        return value
    if info.type == "Resource":
        # A resource inside a resource (Bundle.entry.resource) is summarised
        # by its own definition.
        return _summary_of(value, _table(value.get("resourceType")))
    return _summary_of(value, elements(info.model))


def _with_subsetted_tag(resource: dict) -> dict:
    meta = resource.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    tags = list(meta.get("tag") or ())
    if not any(
        isinstance(t, dict) and t.get("system") == SUBSETTED_SYSTEM and t.get("code") == "SUBSETTED"
        for t in tags
    ):
        tags.append(dict(SUBSETTED_TAG))
    meta["tag"] = tags
    if "meta" in resource:
        return {k: (meta if k == "meta" else v) for k, v in resource.items()}
    # Where a reader expects meta: after id (or resourceType).
    anchor = "id" if "id" in resource else "resourceType"
    out: dict[str, Any] = {}
    for key, value in resource.items():
        out[key] = value
        if key == anchor:
            out["meta"] = meta
    out.setdefault("meta", meta)
    return out


def _keep_top_level(resource: dict, table: Mapping[str, ElementInfo], keep: set[str]) -> dict:
    """The top-level elements in ``keep``, plus mandatory ones, with their ``_`` siblings."""
    out: dict[str, Any] = {}
    for key, value in resource.items():
        name = key[1:] if key.startswith("_") else key
        info = table.get(name)
        if key in _ALWAYS or name in keep or (info is not None and info.required):
            out[key] = value
    return out


def apply_summary(resource: dict, mode: str) -> dict:
    """The resource as ``_summary=<mode>`` returns it (http://hl7.org/fhir/R4/search.html#summary).

    ``true``: only the summary elements, at every level; ``text``: text, id,
    meta and the top-level mandatory elements; ``data``: everything but text;
    ``false``: the resource unchanged. Every mode but ``false`` marks the
    result with the SUBSETTED tag. ``count`` is a search-only mode and, like
    any other value, a BadRequest here.
    """
    if mode == "false":
        return resource
    if mode not in SUMMARY_MODES:
        text = (
            f"`_summary={mode[:40]}` is not supported here; use one of {', '.join(SUMMARY_MODES)}"
        )
        raise BadRequest(
            text, issues=[Issue(code="invalid", diagnostics=text, expression=("_summary",))]
        )
    table = _table(resource.get("resourceType"))
    if mode == "true":
        out = _summary_of(resource, table)
    elif mode == "text":
        out = _keep_top_level(resource, table, {"text"})
    else:  # data
        out = {k: v for k, v in resource.items() if k != "text"}
    return _with_subsetted_tag(out)


def _element_names(names: Iterable[str], rtype: str) -> set[str]:
    # ``_elements=Patient.name,birthDate``: the R4 spec only asks for top-level
    # elements; ``Observation.value`` names ``value[x]``. A name prefixed with
    # another resource type (a search over several types) is not for this one.
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip()
        if "." in name:
            prefix, _, rest = name.partition(".")
            if prefix[:1].isupper():
                if prefix != rtype:
                    continue
                name = rest
            name = name.split(".", 1)[0]
        wanted.add(name.removesuffix("[x]"))
    return wanted


def apply_elements(resource: dict, names: list[str]) -> dict:
    """The resource as ``_elements=<names>`` returns it (http://hl7.org/fhir/R4/search.html#elements).

    Keeps resourceType, id, meta, the named top-level elements (``name`` or
    ``Patient.name``; ``value`` keeps whichever ``value[x]`` is present) and
    the mandatory top-level elements, and adds the SUBSETTED tag. Names that
    are not elements of the resource select nothing.
    """
    rtype = resource.get("resourceType")
    table = _table(rtype)
    wanted = _element_names(names, rtype if isinstance(rtype, str) else "")
    keep = {
        info.name
        for info in table.values()
        if info.name in wanted or (info.choice is not None and info.choice in wanted)
    }
    return _with_subsetted_tag(_keep_top_level(resource, table, keep))
