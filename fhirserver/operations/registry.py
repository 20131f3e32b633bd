"""The table of extended operations the server implements (one module each:
``operations/<resource>_<code>.py``).

Each entry names its OperationDefinition (``conformance/operations/``), which
says at which levels and for which resource types it runs; the routes, the
request pipeline and the CapabilityStatement all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from fhirserver import conformance
from fhirserver.errors import BadRequest, MethodNotAllowed, NotFound
from fhirserver.interactions.registry import Interaction
from fhirserver.interactions.request import FhirRequest, FhirResponse
from fhirserver.storage.repository import Repository

Handler = Callable[[FhirRequest, Repository], FhirResponse]
LEVELS = ("system", "type", "instance")


@dataclass(frozen=True)
class Operation:
    #: The definition's file in conformance/operations/.
    definition_file: str
    handle: Handler
    #: Whether it changes stored data (a write transaction).
    writes: bool = False
    #: Whether it takes an ndjson body as well as a Parameters resource.
    ndjson_body: bool = False

    @cached_property
    def definition(self) -> dict:
        return conformance.load(f"operations/{self.definition_file}")

    @property
    def name(self) -> str:
        return self.definition["code"]

    @property
    def url(self) -> str:
        return self.definition["url"]

    def runs_at(self, level: str) -> bool:
        return bool(self.definition.get(level))

    def applies_to(self, resource_type: str) -> bool:
        types = self.definition.get("resource") or ["Resource"]
        return "Resource" in types or resource_type in types

    def interaction(self, level: str) -> Interaction:
        return Interaction(
            f"${self.name}",
            level,
            self.writes,
            self.handle,
            advertised=False,
            ndjson_body=self.ndjson_body,
        )


def for_capability_statement(level: str, resource_type: str | None = None) -> list[dict]:
    """CapabilityStatement ``operation`` entries: the operations that run at ``level`` (for the type)."""
    return [
        {"name": operation.name, "definition": operation.url}
        for operation in operations().values()
        if operation.runs_at(level)
        and (resource_type is None or operation.applies_to(resource_type))
    ]


def _build() -> dict[str, Operation]:
    from fhirserver.operations import (
        bulk_export,
        bulk_import,
        observation_lastn,
        observation_stats,
        patient_everything,
        resource_meta,
        resource_validate,
    )

    table = [
        Operation("OperationDefinition-Resource-validate.json", resource_validate.handle),
        Operation("OperationDefinition-Resource-meta.json", resource_meta.handle_meta),
        Operation(
            "OperationDefinition-Resource-meta-add.json", resource_meta.handle_add, writes=True
        ),
        Operation(
            "OperationDefinition-Resource-meta-delete.json",
            resource_meta.handle_delete,
            writes=True,
        ),
        Operation("OperationDefinition-Patient-everything.json", patient_everything.handle),
        Operation("OperationDefinition-Observation-lastn.json", observation_lastn.handle),
        Operation("OperationDefinition-Observation-stats.json", observation_stats.handle),
        # Bulk Data export: one code, three definitions (system, Patient, Group level).
        Operation("OperationDefinition-export.json", bulk_export.handle_system),
        Operation("OperationDefinition-patient-export.json", bulk_export.handle_patient),
        Operation("OperationDefinition-group-export.json", bulk_export.handle_group),
        # Bulk import: a Parameters kick-off naming ndjson URLs, or an ndjson upload.
        Operation(
            "OperationDefinition-import.json", bulk_import.handle, writes=True, ndjson_body=True
        ),
    ]
    # Keyed by canonical URL: several definitions may share a code.
    return {operation.url: operation for operation in table}


_TABLE: dict[str, Operation] | None = None


def operations() -> dict[str, Operation]:
    global _TABLE
    if _TABLE is None:
        _TABLE = _build()
    return _TABLE


def resolve(name: str, level: str, resource_type: str | None, method: str) -> Interaction:
    """The interaction that runs ``$name`` at ``level``; 404 for an unknown operation,
    400 for a wrong level or type, 405 for GET of an operation that changes data."""
    candidates = [op for op in operations().values() if op.name == name]
    if not candidates:
        raise NotFound(f"Operation `${name}` is not supported by this server.")
    # The definition for this level and type ($export has one each for system,
    # Patient and Group); otherwise the first, whose checks below say what is wrong.
    operation = next(
        (
            op
            for op in candidates
            if op.runs_at(level) and (resource_type is None or op.applies_to(resource_type))
        ),
        candidates[0],
    )
    if operation.writes and method != "POST":
        raise MethodNotAllowed(f"Operation `${name}` changes data: use POST.")
    if not operation.runs_at(level):
        raise BadRequest(f"Operation `${name}` does not run at {level} level.")
    if resource_type is not None and not operation.applies_to(resource_type):
        raise BadRequest(f"Operation `${name}` does not apply to {resource_type}.")
    return operation.interaction(level)
