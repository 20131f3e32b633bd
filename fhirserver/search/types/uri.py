"""URI search — http://hl7.org/fhir/R4/search.html#uri

Indexed: uri, url, canonical, oid, uuid (and any other string) values as
written, ``|version`` included for canonicals.

Search:

- default: the value exactly; a search value without ``|`` also matches the
  versions of a canonical (``url = v OR url LIKE 'v|%'``), one with
  ``|version`` only that version;
- ``:below``: the value or anything under it on a ``/`` boundary:
  ``url:below=http://acme.org/fhir`` matches ``http://acme.org/fhir`` and
  ``http://acme.org/fhir/ValueSet/123``, not ``http://acme.org/fhirx``;
- ``:above``: the stored value is the search value or one of its parent
  paths: ``url:above=http://acme.org/fhir/ValueSet/123/_history/5`` matches
  ``http://acme.org/fhir`` and ``http://acme.org/fhir/ValueSet``. Parents are
  computed from the search value (``value IN (...)``, an index lookup) and
  stop at the authority: ``http://acme.org`` is the shortest parent. URNs
  (``urn:oid:...``) have no path and match only themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, or_

from fhirserver.errors import BadRequest
from fhirserver.search.escaping import unescape
from fhirserver.storage.tables import SEARCH_TABLES

if TYPE_CHECKING:
    from fhirserver.search.registry import SearchParameter
    from fhirserver.search.types import SearchContext

TABLE = SEARCH_TABLES["uri"]
MODIFIERS = frozenset({"below", "above"})


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    values = dict.fromkeys(n.value for n in nodes if isinstance(n.value, str) and n.value)
    return [{"value": v} for v in values]


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    text = unescape(value).strip()
    if not text:
        raise BadRequest(f"`{parameter.code}`: the search value is empty.")
    column = table.c.value
    if modifier is None:
        if "|" in text:
            return column == text
        return or_(column == text, column.startswith(text + "|", autoescape=True))
    if modifier == "below":
        root = text.rstrip("/") or text
        return or_(column == root, column.startswith(root + "/", autoescape=True))
    if modifier == "above":
        return column.in_(parents(text))
    raise BadRequest(
        f"Modifier `:{modifier}` is not supported on the uri parameter `{parameter.code}`."
    )


def parents(uri: str) -> list[str]:
    """``uri`` and each of its parent paths on ``/`` boundaries, down to the authority."""
    found = [uri]
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return found
    authority, _, path = rest.partition("/")
    segments = [s for s in path.split("/") if s]
    root = f"{scheme}://{authority}"
    for end in range(len(segments) - 1, -1, -1):
        found.append("/".join([root, *segments[:end]]))
    # Written with a trailing slash too (``http://acme.org/fhir/``).
    found += [p + "/" for p in found[1:]]
    return list(dict.fromkeys(found))


def sort_value(table, descending: bool) -> ColumnElement:
    return table.c.value
