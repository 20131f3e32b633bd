"""Compartments from the official R4 CompartmentDefinitions — http://hl7.org/fhir/R4/compartmentdefinition.html

A resource is in the compartment of ``Patient/123`` when one of the search
parameters the definition lists for its type refers to ``Patient/123`` (the
focal resource is in its own compartment too). Compartment search
(``GET [base]/Patient/123/Observation?...``, http://hl7.org/fhir/R4/search.html#compartments)
and later ``$everything`` and access control read membership from here, never
from code that names types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

from fhirserver import conformance
from fhirserver.resources.registry import is_resource_type
from fhirserver.search import registry
from fhirserver.search.registry import SearchParameter

_DEFINITIONS = (
    "CompartmentDefinition-patient.json",
    "CompartmentDefinition-encounter.json",
    "CompartmentDefinition-relatedPerson.json",
    "CompartmentDefinition-practitioner.json",
    "CompartmentDefinition-device.json",
)


@dataclass(frozen=True)
class Compartment:
    #: Patient, Encounter, RelatedPerson, Practitioner or Device.
    code: str
    url: str
    #: Member type -> the reference parameters that put a resource of it into the compartment.
    members: Mapping[str, tuple[SearchParameter, ...]]

    def parameters(self, resource_type: str) -> tuple[SearchParameter, ...] | None:
        """The parameters linking ``resource_type`` to the compartment; None if it is never a member."""
        return self.members.get(resource_type)


def _build(definition: dict) -> Compartment:
    members: dict[str, tuple[SearchParameter, ...]] = {}
    for entry in definition.get("resource", ()):
        resource_type = entry["code"]
        if not is_resource_type(resource_type):
            continue
        parameters = []
        for code in entry.get("param", ()):
            parameter = registry.parameter(resource_type, code)
            # "{def}" (a member by definition, e.g. Device.patient) has no SearchParameter.
            if parameter is not None and parameter.searchable and parameter.type == "reference":
                parameters.append(parameter)
        if parameters or resource_type == definition["code"]:
            members[resource_type] = tuple(parameters)
    return Compartment(definition["code"], definition["url"], MappingProxyType(members))


@cache
def compartments() -> Mapping[str, Compartment]:
    """Compartment type (e.g. ``Patient``) -> its definition."""
    built = (_build(conformance.load(f"compartments/{name}")) for name in _DEFINITIONS)
    return MappingProxyType({c.code: c for c in built})


def compartment(code: str) -> Compartment | None:
    return compartments().get(code)
