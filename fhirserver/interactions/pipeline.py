"""Running one interaction: the handler, then its audit record.

The HTTP dispatcher runs every request through :func:`run`, and a batch or
transaction runs each of its entries through it too, on the same repository
(the same access decisions, the same database transaction): validation,
access control and audit are written once (DESIGN.md, "The request path").
"""

from __future__ import annotations

from fhirserver.audit import record as audit
from fhirserver.interactions.registry import Interaction
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository


def run(interaction: Interaction, request: FhirRequest, repository: Repository) -> FhirResponse:
    response = interaction.handle(request, repository)
    # Inside the transaction: a write and its audit record commit together.
    audit.record(repository, request, request.principal, response)
    return response


def record_failure(request: FhirRequest | None, principal, response: FhirResponse, error) -> None:
    """Audit an interaction that failed (denials included)."""
    audit.record(None, request, principal, response, error)
