"""_text and _content — http://hl7.org/fhir/R4/search.html#text and #content

``_text`` searches the narrative (``text.div`` without its markup),
``_content`` every string value of the resource. Which parameter reads which
comes from conformance/fulltext.json. The words of a search value must all
occur (in any order, whole words, case-insensitive); a comma ORs values.

PostgreSQL: ``to_tsvector('simple', content) @@ plainto_tsquery('simple', q)``
over a GIN expression index ('simple': no stemming, so any language, Cyrillic
included). SQLite: the FTS5 table ``search_text_fts`` (unicode61 tokenizer:
case- and accent-insensitive), kept in step with ``search_text`` by triggers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from lxml import etree
from sqlalchemy import ColumnElement, Select, bindparam, func, literal_column, select, text

from fhirserver.errors import BadRequest
from fhirserver.search.escaping import unescape
from fhirserver.search.registry import SearchParameter
from fhirserver.search.types import SearchContext
from fhirserver.storage.tables import SEARCH_TABLES

TABLE = SEARCH_TABLES["fulltext"]
MODIFIERS: frozenset[str] = frozenset()

#: Enough for any real narrative or record; bounds the index row of a huge resource.
MAX_CHARS = 200_000
#: Keys whose strings are not text a person would search (base64 payloads, the markup).
_NOT_TEXT = frozenset({"data", "div"})
_WORD = re.compile(r"\w+", re.UNICODE)


def index_rows(
    nodes: Iterable[Any],
    parameter: SearchParameter,
    *,
    base_url: str = "",
    resource: dict | None = None,
) -> list[dict]:
    resource = resource if resource is not None else next(iter(nodes), None)
    if not isinstance(resource, dict):
        return []
    if parameter.fulltext == "narrative":
        content = _narrative(resource)
    else:
        content = " ".join(_strings(resource))
        narrative = _narrative(resource)
        content = f"{content} {narrative}" if narrative else content
    content = content.strip()[:MAX_CHARS]
    return [{"content": content, "search_type": "fulltext"}] if content else []


def _narrative(resource: dict) -> str:
    div = (
        (resource.get("text") or {}).get("div") if isinstance(resource.get("text"), dict) else None
    )
    if not isinstance(div, str):
        return ""
    try:
        root = etree.fromstring(
            div.encode(), etree.XMLParser(resolve_entities=False, no_network=True)
        )
    except etree.XMLSyntaxError:
        return ""
    return " ".join(" ".join(root.itertext()).split())


def _strings(value: Any) -> list[str]:
    """Every string of ``value``, depth first in document order."""
    found: list[str] = []
    _collect(value, found)
    return found


def _collect(value: Any, found: list[str]) -> None:
    # Appending to one list instead of nested generators (``yield from`` at
    # every level): the same strings, measured 18 -> 12 us a Synthea resource.
    if isinstance(value, str):
        found.append(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in _NOT_TEXT or key == "resourceType":
                continue
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, _CONTAINERS):
                _collect(item, found)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, _CONTAINERS):
                _collect(item, found)


_CONTAINERS = (dict, list)


def condition(
    table, value: str, modifier: str | None, parameter: SearchParameter, context: SearchContext
) -> ColumnElement[bool]:
    words = _WORD.findall(unescape(value))
    if not words:
        raise BadRequest(f"`{parameter.code}={value}` has no words to search for.")
    if context.dialect == "postgresql":
        return func.to_tsvector(text("'simple'"), table.c.content).op("@@")(
            func.plainto_tsquery(text("'simple'"), " ".join(words))
        )
    # FTS5: each word quoted (no query syntax from the client), all must match.
    match = " ".join('"' + word.replace('"', '""') + '"' for word in words)
    # unique bind names: one search may OR several of these conditions.
    matches = text("search_text_fts MATCH :query AND param = :param").bindparams(
        bindparam("query", match, unique=True), bindparam("param", parameter.code, unique=True)
    )
    matching: Select = (
        select(literal_column("resource_pk")).select_from(text("search_text_fts")).where(matches)
    )
    return table.c.resource_pk.in_(matching)


def sort_value(table, descending: bool) -> ColumnElement:
    raise BadRequest("Search results cannot be sorted by _text or _content.")
