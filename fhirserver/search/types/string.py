"""String search — http://hl7.org/fhir/R4/search.html#string

Indexed: plain strings (string, markdown, and any other primitive that arrives
as text), HumanName (each family, given, prefix and suffix part a row, plus the
full name: ``text`` when present, else the parts joined with spaces, so that
``name=peter chalmers`` works), Address (each line, city, district, state,
postalCode, country, and ``text``). Other complex values index their ``text``
when they have one. Each row keeps the value as written (``exact``) and
:func:`~fhirserver.search.normalize.normalize_text` of it (``normalized``).

Search: the default matches values that *start with* the search value after
both are normalized; ``:exact`` compares the unnormalized value exactly (case
and accents matter); ``:contains`` matches anywhere in the normalized value.
LIKE wildcards in the search value (``%``, ``_``) are escaped (SQLAlchemy
``autoescape``: an ``ESCAPE '/'`` clause, the same on SQLite and PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_

from fhirserver.errors import BadRequest
from fhirserver.search.escaping import unescape
from fhirserver.search.normalize import normalize_text
from fhirserver.storage.tables import SEARCH_TABLES

if TYPE_CHECKING:
    from fhirserver.search.registry import SearchParameter
    from fhirserver.search.types import SearchContext

TABLE = SEARCH_TABLES["string"]
MODIFIERS = frozenset({"exact", "contains"})

_HUMAN_NAME_PARTS = ("family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    rows: list[dict] = []
    seen: set[str] = set()
    for node in nodes:
        for text in _texts(node.value, node.type):
            if text and text not in seen:
                seen.add(text)
                normalized = normalize_text(text)
                if normalized:
                    rows.append({"normalized": normalized, "exact": text})
    return rows


def _texts(value: Any, type_code: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        # Numbers, booleans: a string parameter over them is unusual; index their text form.
        return (
            [] if value is None else [str(value).lower() if isinstance(value, bool) else str(value)]
        )
    if type_code == "HumanName":
        parts = [p for key in _HUMAN_NAME_PARTS for p in _strings(value.get(key))]
        full = value.get("text")
        if not isinstance(full, str) or not full.strip():
            ordered = [
                *_strings(value.get("prefix")),
                *_strings(value.get("given")),
                *_strings(value.get("family")),
                *_strings(value.get("suffix")),
            ]
            full = " ".join(ordered) if len(ordered) > 1 else None
        return parts + ([full] if full else [])
    if type_code == "Address":
        return [p for key in _ADDRESS_PARTS for p in _strings(value.get(key))]
    return _strings(value.get("text"))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    text = unescape(value)
    if not text.strip():
        raise BadRequest(f"`{parameter.code}`: the search value is empty.")
    normalized = normalize_text(text)
    if modifier == "exact":
        # Equal values have equal normalized forms: that part is an index lookup.
        return and_(table.c.normalized == normalized, table.c.exact == text)
    if modifier == "contains":
        return table.c.normalized.contains(normalized, autoescape=True)
    if modifier is None:
        return table.c.normalized.startswith(normalized, autoescape=True)
    raise BadRequest(
        f"Modifier `:{modifier}` is not supported on the string parameter `{parameter.code}`."
    )


def sort_value(table, descending: bool) -> ColumnElement:
    return table.c.normalized
