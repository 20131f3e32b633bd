"""search: ``GET [base]/[type]`` — http://hl7.org/fhir/R4/search.html

Search arrives with issue 3 (index tables, every R4 SearchParameter). Until
then the server says so with 501 rather than answering with wrong results,
and the CapabilityStatement does not advertise it.
"""

from __future__ import annotations

from fhirserver.errors import NotImplementedYet
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository

IMPLEMENTED = False


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    raise NotImplementedYet(f"Search on {request.resource_type} is not implemented yet.")
