"""Operation input: query parameters (GET) or a Parameters resource (POST).

http://hl7.org/fhir/R4/operations.html#request: a POST carries a Parameters
resource, or — for an operation with a single resource input — the resource
itself; a GET carries primitive parameters in the query string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhirserver.errors import BadRequest
from fhirserver.interactions.request import FhirRequest


@dataclass
class OperationInput:
    #: name -> the ``Parameters.parameter`` entries (dicts with value[x], resource or part).
    parameters: dict[str, list[dict]] = field(default_factory=dict)

    @classmethod
    def of(cls, request: FhirRequest, *, resource_parameter: str | None = None) -> OperationInput:
        result = cls()
        for name, value in request.params:
            if name.startswith("_") and name in ("_format", "_pretty"):
                continue
            result.parameters.setdefault(name, []).append({"name": name, "valueString": value})
        body = request.body
        if body is None:
            return result
        if body.get("resourceType") == "Parameters":
            for parameter in body.get("parameter") or []:
                if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
                    raise BadRequest("Every Parameters.parameter needs a name.")
                result.parameters.setdefault(parameter["name"], []).append(parameter)
        elif resource_parameter is not None:
            result.parameters.setdefault(resource_parameter, []).append(
                {"name": resource_parameter, "resource": body}
            )
        else:
            raise BadRequest("The body of this operation must be a Parameters resource.")
        return result

    def value(self, name: str) -> Any:
        """The single value (value[x] or resource) of ``name``; None when absent, 400 when repeated."""
        entries = self.parameters.get(name) or []
        if len(entries) > 1:
            raise BadRequest(f"Parameter `{name}` may appear only once.")
        return _value(entries[0]) if entries else None

    def values(self, name: str) -> list[Any]:
        return [_value(entry) for entry in self.parameters.get(name) or []]

    def string(self, name: str) -> str | None:
        value = self.value(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Parameter `{name}` must be a primitive value.")
        return value


def _value(entry: dict) -> Any:
    if "resource" in entry:
        return entry["resource"]
    for key, value in entry.items():
        if key.startswith("value"):
            return value
    if "part" in entry:
        return entry["part"]
    return None


def parameters_resource(*parameters: dict) -> dict:
    """A Parameters resource of the given ``{"name": ..., "value[x]"|"resource": ...}`` entries."""
    return {"resourceType": "Parameters", "parameter": list(parameters)}
