"""Reference search — http://hl7.org/fhir/R4/search.html#reference

Index rows (``target_type``, ``target_id``, ``url``, ``identifier_system``,
``identifier_value``); ``target_type``/``target_id`` are set **only for
references to this server**, so joins on them (chaining, ``_has``,
``_include``) never reach a resource of another server:

- ``Type/id`` and ``Type/id/_history/n`` (relative): ``(Type, id)``; the version
  is not kept, a versioned reference is found by its type and id;
- an absolute URL that starts with this server's base URL: as relative. The
  base is only known when the caller passes ``base_url`` to :func:`index_rows`
  (the SearchParameter contract has no context at write time); without it an
  absolute URL is stored in ``url`` like any other;
- any other absolute URL or URN (``http://other/fhir/Patient/1``,
  ``urn:uuid:...``): ``url``, as written;
- ``#id`` (a contained resource): not indexed (R4 does not search into
  contained resources here);
- ``Reference.identifier``: ``identifier_system`` / ``identifier_value``, in the
  same row as the reference (if any);
- ``Reference.type`` without ``Reference.reference``: ``target_type`` with a
  NULL ``target_id`` (a logical reference, found by ``:identifier``);
- an Attachment (``Consent.source[x]``): its ``url`` in ``url``;
- canonical, uri and url values: ``url`` as written, ``|version`` included.
  A search value without ``|version`` matches every version
  (``url = v OR url LIKE 'v|%'``), one with a version only that version — one
  row keeps both the versioned and the unversioned match possible.

Search:

- ``Type/id`` (also ``Type/id/_history/n``): ``target_type``, ``target_id``;
- ``id``: ``target_id``, with ``target_type`` among the parameter's targets
  (any type if it lists none); ``:Type`` (e.g. ``subject:Patient=1``)
  restricts the type;
- an absolute URL of this server (``context.base_url``): as ``Type/id``, or the
  URL as written in ``url`` (references that were stored absolute);
- another absolute URL or URN: ``url`` (versions as for canonicals above);
- ``:identifier``: ``system|value``, ``|value`` (no system), ``value`` (any
  system), ``system|`` (any value) on the identifier columns.

``:missing`` / ``:not`` belong to the planner; chaining too, with
:func:`target_condition`. ``:above`` / ``:below`` on canonical references are
not supported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, func, or_

from fhirserver import conformance
from fhirserver.errors import BadRequest
from fhirserver.search.escaping import split, unescape
from fhirserver.storage.tables import SEARCH_TABLES

if TYPE_CHECKING:
    from sqlalchemy import Select

    from fhirserver.search.registry import SearchParameter
    from fhirserver.search.types import SearchContext

TABLE = SEARCH_TABLES["reference"]
#: ``:[Type]`` modifiers are accepted too (any resource type, see parse._check_modifier).
MODIFIERS = frozenset({"identifier"})

#: http://hl7.org/fhir/R4/references.html#literal — ``[base/]Type/id[/_history/version]``.
_LITERAL = re.compile(
    r"(?:(?P<base>[A-Za-z][A-Za-z0-9+.-]*://.+?)/)?"
    r"(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_VALUE_LENGTH = 512


@cache
def _r4_types() -> frozenset[str]:
    """Every R4 resource type (also ones this server does not store: a reference may name them)."""
    return frozenset(conformance.load("r4-resource-types.json")["resourceTypes"])


def parse_literal(reference: str) -> tuple[str | None, str, str] | None:
    """``(base or None, Type, id)`` of a literal reference, None when it is not one."""
    match = _LITERAL.fullmatch(reference)
    if match is None or match["type"] not in _r4_types():
        return None
    return match["base"], match["type"], match["id"]


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    rows: dict[tuple, None] = {}
    for node in nodes:
        row = _row(node.value, node.type, _base(base_url))
        if row is not None and any(v is not None for v in row):
            rows[row] = None
    keys = ("target_type", "target_id", "url", "identifier_system", "identifier_value")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _row(value: Any, type_code: str, base_url: str) -> tuple | None:
    if isinstance(value, str):
        if type_code in ("Reference",):
            return _reference_row({"reference": value}, base_url)
        return (None, None, value, None, None) if value else None
    if isinstance(value, dict):
        if type_code == "Attachment":  # e.g. Consent.source[x]: its url
            url = value.get("url")
            return (None, None, url, None, None) if isinstance(url, str) and url else None
        return _reference_row(value, base_url)
    return None


def _reference_row(reference: dict, base_url: str) -> tuple | None:
    target_type = target_id = url = None
    literal = reference.get("reference")
    if isinstance(literal, str) and literal and not literal.startswith("#"):
        parsed = parse_literal(literal)
        if parsed is not None and (
            parsed[0] is None or (base_url and _base(parsed[0]) == base_url)
        ):
            _, target_type, target_id = parsed
        else:
            url = literal
    # A contained reference (``#id``) leaves target and url empty: not indexed.
    if target_type is None and url is None and isinstance(reference.get("type"), str):
        target_type = reference["type"]
    identifier: dict = (
        reference["identifier"] if isinstance(reference.get("identifier"), dict) else {}
    )
    identifier_system = identifier.get("system") or None
    identifier_value = identifier.get("value") or None
    if isinstance(identifier_value, str):
        identifier_value = identifier_value[:_VALUE_LENGTH]
    if target_id is None and url is None and identifier_value is None and identifier_system is None:
        return None
    return (target_type, target_id, url, identifier_system, identifier_value)


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    if modifier == "identifier":
        return _identifier(table, value, parameter)
    if modifier is not None and modifier not in _r4_types():
        raise BadRequest(
            f"Modifier `:{modifier}` is not supported on the reference parameter `{parameter.code}`."
        )
    text = unescape(value).strip()
    if not text:
        raise BadRequest(f"`{parameter.code}`: the search value is empty.")
    base = _base(context.base_url)

    if _ID.fullmatch(text):
        if modifier is not None:
            return _local(table, modifier, text)
        types = tuple(parameter.target)
        if len(types) == 1:
            return _local(table, types[0], text)
        matches_id = table.c.target_id == text
        return and_(table.c.target_type.in_(types), matches_id) if types else matches_id

    parsed = parse_literal(text)
    if parsed is not None:
        literal_base, target_type, target_id = parsed
        if modifier is not None and modifier != target_type:
            raise BadRequest(
                f"`{parameter.code}:{modifier}={value}` names a {target_type}, not a {modifier}."
            )
        ours = base != "" and literal_base is not None and _base(literal_base) == base
        if literal_base is not None and not ours:
            return _url(table, text)  # another server's resource: compared as written
        if parameter.target and target_type not in parameter.target:
            raise BadRequest(
                f"`{parameter.code}={value}`: `{parameter.code}` cannot refer to {target_type} "
                f"(targets: {', '.join(parameter.target)})."
            )
        if not ours:
            return _local(table, target_type, target_id)
        # Ours: found as Type/id, or as written when the reference was stored absolute.
        return or_(_local(table, target_type, target_id), _url(table, text))

    if ":" in text:
        if modifier is not None:
            raise BadRequest(
                f"`{parameter.code}:{modifier}={value}` is not a {modifier} reference."
            )
        return _url(table, text)
    raise BadRequest(
        f"`{parameter.code}={value}` is not a reference: expected Type/id, id or an absolute URL."
    )


def _local(table, target_type: str, target_id: str) -> ColumnElement[bool]:
    return and_(table.c.target_type == target_type, table.c.target_id == target_id)


def _url(table, url: str) -> ColumnElement[bool]:
    if "|" in url:
        return table.c.url == url
    # Canonicals: an unversioned search value matches every version.
    return or_(table.c.url == url, table.c.url.startswith(url + "|", autoescape=True))


def _identifier(table, value: str, parameter: SearchParameter) -> ColumnElement[bool]:
    parts = split(value, "|")
    if len(parts) == 1:
        identifier_value = unescape(parts[0])
        if not identifier_value:
            raise BadRequest(f"`{parameter.code}:identifier`: the search value is empty.")
        return table.c.identifier_value == identifier_value[:_VALUE_LENGTH]
    if len(parts) != 2 or not (parts[0] or parts[1]):
        raise BadRequest(
            f"`{parameter.code}:identifier={value}` must be system|value, |value or value."
        )
    system, identifier_value = unescape(parts[0]), unescape(parts[1])[:_VALUE_LENGTH]
    if not system:
        return and_(
            table.c.identifier_system.is_(None), table.c.identifier_value == identifier_value
        )
    if not identifier_value:
        return table.c.identifier_system == system
    return and_(table.c.identifier_system == system, table.c.identifier_value == identifier_value)


def target_condition(table, target_type: str, target_ids: Select) -> ColumnElement[bool]:
    """Rows that refer to a ``target_type`` resource whose id is in ``target_ids`` (chaining)."""
    return and_(table.c.target_type == target_type, table.c.target_id.in_(target_ids))


def sort_value(table, descending: bool) -> ColumnElement:
    return func.coalesce(table.c.target_id, table.c.url, table.c.identifier_value)
