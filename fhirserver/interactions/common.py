"""Small helpers shared by the interaction modules."""

from __future__ import annotations

from fhirserver.errors import BadRequest, Gone, NotFound
from fhirserver.interactions.request import FhirResponse
from fhirserver.resources.validate import is_valid_id
from fhirserver.storage.repository import StoredVersion


def require_valid_id(resource_type: str, id: str) -> None:
    if not is_valid_id(id):
        raise BadRequest(
            f"`{id}` is not a valid id for {resource_type}: ids are 1-64 characters of A-Z, a-z, 0-9, '-' and '.'."
        )


def require_present(resource_type: str, id: str, version: StoredVersion | None) -> StoredVersion:
    """The current version, or NotFound/Gone as a read must answer."""
    if version is None:
        raise NotFound(f"Resource `{resource_type}/{id}` was not found.")
    if version.deleted:
        raise Gone(
            f"Resource `{resource_type}/{id}` was deleted (version {version.version_id}).",
            headers={"ETag": f'W/"{version.version_id}"'},
        )
    return version


def resource_response(
    version: StoredVersion, *, status: int = 200, base_url: str | None = None
) -> FhirResponse:
    """A single stored version as a response, with ETag and Last-Modified."""
    location = None
    if base_url is not None:
        location = f"{base_url}/{version.resource_type}/{version.id}/_history/{version.version_id}"
    return FhirResponse(
        status=status,
        body=version.body,
        version_id=version.version_id,
        last_modified=version.last_updated,
        location=location,
    )


def parse_version_tag(etag: str | None) -> int | None:
    """``W/"3"`` (or ``"3"`` or ``3``) -> 3; None when absent. Unparseable -> 400."""
    if etag is None:
        return None
    text = etag.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise BadRequest(f'`{etag}` is not a version ETag (expected W/"<versionId>").')
    return int(text)
