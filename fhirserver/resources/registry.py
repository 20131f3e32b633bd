"""Which resource types the server serves, and their fhir.resources R4B models.

The server speaks FHIR R4 (4.0.1). Validation uses the fhir.resources R4B
models, so the served types are the R4 resource types the R4B models also know
(R4B dropped e.g. the MedicinalProduct* family and EffectEvidenceSynthesis; see
docs/KNOWN-LIMITS.md).
"""

from __future__ import annotations

from functools import cache

from fhir.resources.R4B import fhirtypes, get_fhir_model_class

from fhirserver import conformance

# Not RESTful resources: Parameters only carries operation arguments
# (http://hl7.org/fhir/R4/parameters.html) and an OperationOutcome is a response.
_NOT_STORED = frozenset({"Parameters", "OperationOutcome"})


def _known_to_models(name: str) -> bool:
    # Ask fhir.resources' type table without importing the model module: importing
    # all R4B models takes ~15 s, and each is imported when first needed instead.
    return hasattr(fhirtypes, f"{name}Type")


@cache
def resource_types() -> tuple[str, ...]:
    """The stored resource types, sorted."""
    r4 = conformance.load("r4-resource-types.json")["resourceTypes"]
    return tuple(sorted(t for t in r4 if t not in _NOT_STORED and _known_to_models(t)))


@cache
def _type_set() -> frozenset[str]:
    return frozenset(resource_types())


def is_resource_type(name: str) -> bool:
    return name in _type_set()


def model_class(name: str):  # -> type[FHIRAbstractModel]
    """The R4B model class of any resource type (stored or not, e.g. OperationOutcome)."""
    return get_fhir_model_class(name)
