"""Which interaction a batch/transaction entry's ``request.method`` + ``request.url`` asks for.

http://hl7.org/fhir/R4/bundle-definitions.html#Bundle.entry.request.url: the
URL is relative to the server base (an absolute URL must be under it). The
forms are those of the REST API (http://hl7.org/fhir/R4/http.html), mapped to
the same interaction codes the HTTP routes use.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from fhirserver.errors import BadRequest, NotFound
from fhirserver.interactions import registry
from fhirserver.interactions.registry import Interaction
from fhirserver.operations import registry as operations
from fhirserver.resources.registry import is_resource_type


@dataclass(frozen=True)
class EntryTarget:
    interaction: Interaction
    resource_type: str | None = None
    id: str | None = None
    version_id: str | None = None
    compartment_search: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    @property
    def conditional(self) -> bool:
        """PUT/DELETE/PATCH on the type: the criteria pick the resource."""
        return self.id is None and self.interaction.code in ("update", "delete", "patch")


def route(method: str, url: str, base_url: str) -> EntryTarget:
    if "://" in url:
        if not url.startswith(base_url + "/"):
            raise BadRequest(f"`{url}` is not a URL of this server ({base_url}).")
        url = url[len(base_url) + 1 :]
    parts = urlsplit(url)
    segments = [s for s in parts.path.strip("/").split("/") if s]
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    if segments and segments[-1].startswith("$"):
        return _operation(method, segments, params)
    if segments and segments[0] not in ("_history", "metadata"):
        if not is_resource_type(segments[0]):
            raise NotFound(f"Resource type `{segments[0]}` is not supported by this server.")
    code, path = _interaction(method, segments, bool(params), url)
    return EntryTarget(registry.get(code), params=params, **path)


def _interaction(method: str, s: list[str], has_query: bool, url: str) -> tuple[str, dict]:
    n = len(s)
    reading = method in ("GET", "HEAD")
    if n == 0 and reading:
        return "search-system", {}
    if s == ["metadata"] and reading:
        return "capabilities", {}
    if s == ["_history"] and reading:
        return "history-system", {}
    if n == 1:
        table = {"GET": "search-type", "HEAD": "search-type", "POST": "create"}
        if method in ("PUT", "DELETE", "PATCH") and has_query:
            table.update(PUT="update", DELETE="delete", PATCH="patch")
        if method in table:
            return table[method], {"resource_type": s[0]}
    if n == 2 and s[1] == "_search" and method == "POST":
        return "search-type", {"resource_type": s[0]}
    if n == 2 and s[1] == "_history" and reading:
        return "history-type", {"resource_type": s[0]}
    if n == 2:
        table = {"GET": "read", "HEAD": "read", "PUT": "update", "DELETE": "delete"}
        table["PATCH"] = "patch"
        if method in table:
            return table[method], {"resource_type": s[0], "id": s[1]}
    if n == 3 and s[2] == "_history" and reading:
        return "history-instance", {"resource_type": s[0], "id": s[1]}
    if n == 3 and reading:
        return "search-compartment", {
            "resource_type": s[0],
            "id": s[1],
            "compartment_search": s[2],
        }
    if n == 4 and s[2] == "_history" and reading:
        return "vread", {"resource_type": s[0], "id": s[1], "version_id": s[3]}
    raise BadRequest(f"`{method} {url}` is not an interaction a batch or transaction can run.")


def _operation(method: str, segments: list[str], params) -> EntryTarget:
    name = segments[-1][1:]
    resource_type = segments[0] if len(segments) >= 2 else None
    id = segments[1] if len(segments) == 3 else None
    if len(segments) > 3 or (resource_type is not None and not is_resource_type(resource_type)):
        raise BadRequest(f"`{'/'.join(segments)}` is not an operation URL.")
    level = "instance" if id else "type" if resource_type else "system"
    interaction = operations.resolve(name, level, resource_type, method)
    return EntryTarget(interaction, resource_type=resource_type, id=id, params=params)
