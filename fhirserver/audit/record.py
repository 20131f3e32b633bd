"""The audit hook of the request pipeline.

Dispatch calls :func:`record` once per interaction, for successes, denials and
failures alike, inside the request's transaction for writes. It records
nothing yet: the tamper-evident AuditEvent log is issue 5, which fills this in
without touching the pipeline.
"""

from __future__ import annotations

from fhirserver.consent.principal import Principal
from fhirserver.interactions.request import FhirRequest, FhirResponse


def record(
    repository: object | None,
    request: FhirRequest | None,
    principal: Principal,
    response: FhirResponse | None,
    error: Exception | None = None,
) -> None:
    """Record one interaction (no-op until the audit log exists)."""
    return None
