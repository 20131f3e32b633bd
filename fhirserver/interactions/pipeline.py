"""Running one interaction: the handler, then its audit record.

The HTTP dispatcher runs every request through :func:`run`, and a batch or
transaction runs each of its entries through it too, on the same repository
(the same access decisions, the same database transaction): validation,
access control and audit are written once (DESIGN.md, "The request path").
"""

from __future__ import annotations

from fhirserver.audit import record as audit
from fhirserver.errors import MethodNotAllowed
from fhirserver.interactions.registry import Interaction
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository

#: Types whose stored resources never change: the audit trail is append-only
#: (issue 5). Creating one is allowed (POST, or PUT of a new id); changing or
#: deleting one is a 405.
APPEND_ONLY = frozenset({"AuditEvent"})
_CHANGES = frozenset({"update", "patch", "delete", "$meta-add", "$meta-delete"})


def _changes_stored(interaction: Interaction, request: FhirRequest, repository: Repository) -> bool:
    if interaction.code not in _CHANGES:
        return False
    if interaction.code == "update" and request.id is not None and request.resource_type:
        # Update-as-create of a new id is a create.
        return repository.read(request.resource_type, request.id) is not None
    return True


def run(interaction: Interaction, request: FhirRequest, repository: Repository) -> FhirResponse:
    if request.resource_type in APPEND_ONLY and _changes_stored(interaction, request, repository):
        raise MethodNotAllowed(
            f"{request.resource_type} resources are append-only: they cannot be"
            f" changed or deleted ({interaction.code.lstrip('$')})."
        )
    response = interaction.handle(request, repository)
    # Inside the transaction: a write and its audit record commit together.
    audit.record(repository, request, request.principal, response)
    return response


def record_failure(request: FhirRequest | None, principal, response: FhirResponse, error) -> None:
    """Audit an interaction that failed (denials included)."""
    audit.record(None, request, principal, response, error)
