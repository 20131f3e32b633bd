"""capabilities: ``GET [base]/metadata`` — http://hl7.org/fhir/R4/http.html#capabilities

The CapabilityStatement is computed from the registries that serve requests
(resource types, interactions; later search parameters and operations), never
written by hand.
"""

from __future__ import annotations

from functools import cache

from fhirserver import __version__
from fhirserver.interactions import registry
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.operations import registry as operation_registry
from fhirserver.resources.registry import resource_types
from fhirserver.search import registry as search_registry
from fhirserver.search.compartments import compartments
from fhirserver.search.types import SEARCHABLE_TYPES
from fhirserver.storage.repository import Repository

FHIR_VERSION = "4.0.1"
FORMATS = ["application/fhir+json", "application/fhir+xml", "json", "xml"]
#: The date of this software release (CapabilityStatement.date is required).
RELEASE_DATE = "2026-11-29"


def handle(request: FhirRequest, repository: Repository) -> FhirResponse:
    statement = dict(_statement_template())
    statement["implementation"] = {
        "description": "fhirserver FHIR R4 server",
        "url": request.base_url,
    }
    return FhirResponse(status=200, resource=statement)


def _search_parameters(resource_type: str) -> list[dict]:
    """The type's searchable parameters, from the same registry the search planner uses."""
    return [
        {"name": code, "definition": parameter.url, "type": parameter.type}
        for code, parameter in sorted(search_registry.parameters_for(resource_type).items())
        if parameter.searchable and parameter.type in SEARCHABLE_TYPES
    ]


def _operations(resource_type: str) -> list[dict]:
    """Type- and instance-level operations of the type, from the operation registry."""
    entries = operation_registry.for_capability_statement("type", resource_type)
    entries += [
        e
        for e in operation_registry.for_capability_statement("instance", resource_type)
        if e not in entries
    ]
    return entries


@cache
def _statement_template() -> dict:
    advertised = [i for i in registry.interactions().values() if i.advertised]
    type_codes = [{"code": i.code} for i in advertised if i.level in ("instance", "type")]
    system_codes = [{"code": i.code} for i in advertised if i.level == "system"]
    resources = [
        {
            "type": resource_type,
            "interaction": type_codes,
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalUpdate": True,
            "conditionalRead": "full-support",
            "conditionalDelete": "multiple",
            "searchInclude": ["*"],
            "searchRevInclude": ["*"],
            "searchParam": _search_parameters(resource_type),
            "operation": _operations(resource_type),
        }
        for resource_type in resource_types()
    ]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "fhirserver",
        "kind": "instance",
        "software": {"name": "fhirserver", "version": __version__},
        "fhirVersion": FHIR_VERSION,
        "format": FORMATS,
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": system_codes,
                "operation": operation_registry.for_capability_statement("system"),
                "compartment": [c.url for c in compartments().values()],
            }
        ],
    }
