"""Who is asking: the authenticated caller of a request.

Until OAuth2/SMART lands (issue 5), every request runs as the fixed
administrator :data:`ADMINISTRATOR`; dispatch already passes a Principal
through the pipeline so that access control only has to fill it in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    #: patient, practitioner, insurer, government, support, system or admin.
    role: str
    #: The FHIR reference of the caller, e.g. ``Practitioner/123`` (None for the built-in admin).
    subject: str | None = None
    scopes: frozenset[str] = frozenset()


ADMINISTRATOR = Principal(role="admin", subject=None, scopes=frozenset({"system/*.cruds"}))
