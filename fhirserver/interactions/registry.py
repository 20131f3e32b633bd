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
    #: Takes an ndjson body (``FhirRequest.ndjson``: a bulk ``$import`` upload).
    ndjson_body: bool = False


def _build() -> dict[str, Interaction]:
    from fhirserver.bulk import status as bulk_status
    from fhirserver.interactions import (
        capabilities,
        create,
        delete,
        history,
        patch,
        read,
        search,
        transaction,
        update,
        vread,
    )

    table = [
        Interaction("read", "instance", False, read.handle),
        Interaction("vread", "instance", False, vread.handle),
        Interaction("update", "instance", True, update.handle),
        Interaction("delete", "instance", True, delete.handle),
        Interaction("patch", "instance", True, patch.handle),
        Interaction("history-instance", "instance", False, history.handle),
        Interaction("history-type", "type", False, history.handle),
        Interaction("create", "type", True, create.handle),
        Interaction("search-type", "type", False, search.handle, advertised=search.IMPLEMENTED),
        Interaction("history-system", "system", False, history.handle),
        # One handler for both Bundle types; "batch" is advertised beside it.
        Interaction("transaction", "system", True, transaction.handle),
        Interaction("batch", "system", True, transaction.handle),
        Interaction("search-system", "system", False, search.handle),
        # Compartment search: advertised as CapabilityStatement.rest.compartment.
        Interaction("search-compartment", "instance", False, search.handle, advertised=False),
        Interaction("capabilities", "system", False, capabilities.handle, advertised=False),
        # Bulk Data export status, cancel and files (http://hl7.org/fhir/uv/bulkdata/export.html):
        # not FHIR interactions, but they take the same path (access control, audit).
        Interaction(
            "bulk-export-status", "system", False, bulk_status.handle_status, advertised=False
        ),
        Interaction(
            "bulk-export-cancel", "system", True, bulk_status.handle_cancel, advertised=False
        ),
        Interaction("bulk-file", "system", False, bulk_status.handle_file, advertised=False),
        # Bulk import status and cancel (after the Bulk Data import proposal).
        Interaction(
            "bulk-import-status",
            "system",
            False,
            bulk_status.handle_import_status,
            advertised=False,
        ),
        Interaction(
            "bulk-import-cancel", "system", True, bulk_status.handle_import_cancel, advertised=False
        ),
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
