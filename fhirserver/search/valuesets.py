"""The codes of a ValueSet stored on this server, for token ``:in`` / ``:not-in``.

http://hl7.org/fhir/R4/search.html#modifiers and http://hl7.org/fhir/R4/valueset.html:
a stored ``ValueSet.expansion`` is used as it is; otherwise ``compose`` is
evaluated: explicit ``concept`` lists, whole code systems (an include with a
system and no concepts), nested ``valueSet`` imports and ``exclude``. Concept
``filter``s need a terminology server and are refused with a clear 400.
"""

from __future__ import annotations

from sqlalchemy import Connection, false, select

from fhirserver.errors import BadRequest
from fhirserver.resources import jsonio
from fhirserver.storage.tables import resource, search_uri

#: (system, code); code None means every code of the system.
Code = tuple[str | None, str | None]
_MAX_IMPORT_DEPTH = 5


def codes(conn: Connection, url: str, *, depth: int = 0) -> list[Code] | None:
    """The codes of the newest stored ValueSet with canonical ``url`` (``url|version`` allowed); None if unknown."""
    if depth > _MAX_IMPORT_DEPTH:
        raise BadRequest(
            f"ValueSet `{url}` imports other ValueSets more than {_MAX_IMPORT_DEPTH} levels deep."
        )
    canonical, _, version = url.partition("|")
    value_set = _load(conn, canonical, version or None)
    if value_set is None:
        return None
    expansion = value_set.get("expansion")
    if isinstance(expansion, dict) and expansion.get("contains"):
        return list(_contains(expansion["contains"]))
    compose = value_set.get("compose") or {}
    included: list[Code] = []
    for include in compose.get("include") or ():
        included += _include(conn, url, include, depth)
    excluded = {
        (item.get("system"), concept.get("code"))
        for item in compose.get("exclude") or ()
        for concept in item.get("concept") or ()
    }
    return [code for code in included if code not in excluded]


def _include(conn: Connection, url: str, include: dict, depth: int) -> list[Code]:
    if include.get("filter"):
        raise BadRequest(
            f"ValueSet `{url}` selects codes with filters, which this server cannot evaluate."
        )
    system = include.get("system")
    found: list[Code] = []
    if include.get("concept"):
        found = [
            (system, concept.get("code")) for concept in include["concept"] if concept.get("code")
        ]
    elif system:
        found = [(system, None)]
    for imported in include.get("valueSet") or ():
        nested = codes(conn, imported, depth=depth + 1)
        if nested is None:
            raise BadRequest(f"ValueSet `{url}` imports `{imported}`, which is not on this server.")
        found += nested if not system else [c for c in nested if c[0] == system]
    return found


def _contains(items: list) -> list[Code]:
    out: list[Code] = []
    for item in items:
        if item.get("code") and not item.get("abstract"):
            out.append((item.get("system"), item["code"]))
        out += _contains(item.get("contains") or [])
    return out


def _load(conn: Connection, canonical: str, version: str | None) -> dict | None:
    by_url = select(search_uri.c.resource_pk).where(
        search_uri.c.resource_type == "ValueSet",
        search_uri.c.param == "url",
        search_uri.c.value == canonical,
    )
    rows = conn.execute(
        select(resource.c.body)
        .where(resource.c.pk.in_(by_url), resource.c.deleted == false())
        .order_by(resource.c.last_updated.desc())
    )
    for (body,) in rows:
        value_set = jsonio.loads(body)
        if version is None or value_set.get("version") == version:
            return value_set
    return None
