"""The table of FHIR interactions the server implements.

The HTTP routes and the CapabilityStatement are both read from here, so what
the server says it does and what it does cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository

Handler = Callable[[FhirRequest, Repository], FhirResponse]


@dataclass(frozen=True)
class Interaction:
    #: The CapabilityStatement code (TypeRestfulInteraction / SystemRestfulInteraction).
    code: str
    #: instance, type or system (http://hl7.org/fhir/R4/http.html).
    level: str
    #: Whether it writes (a write transaction; on SQLite the database lock is taken up front).
    writes: bool
    handle: Handler
    #: Listed in the CapabilityStatement (False for capabilities itself).
    advertised: bool = True


def _build() -> dict[str, Interaction]:
    from fhirserver.interactions import (
        capabilities,
        create,
        delete,
        history,
        read,
        search,
        update,
        vread,
    )

    table = [
        Interaction("read", "instance", False, read.handle),
        Interaction("vread", "instance", False, vread.handle),
        Interaction("update", "instance", True, update.handle),
        Interaction("delete", "instance", True, delete.handle),
        Interaction("history-instance", "instance", False, history.handle),
        Interaction("history-type", "type", False, history.handle),
        Interaction("create", "type", True, create.handle),
        Interaction("search-type", "type", False, search.handle, advertised=search.IMPLEMENTED),
        Interaction("history-system", "system", False, history.handle),
        Interaction("search-system", "system", False, search.handle),
        # Compartment search: advertised as CapabilityStatement.rest.compartment.
        Interaction("search-compartment", "instance", False, search.handle, advertised=False),
        Interaction("capabilities", "system", False, capabilities.handle, advertised=False),
    ]
    return {interaction.code: interaction for interaction in table}


_TABLE: dict[str, Interaction] | None = None


def interactions() -> dict[str, Interaction]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _build()
    return _TABLE


def get(code: str) -> Interaction:
    return interactions()[code]
