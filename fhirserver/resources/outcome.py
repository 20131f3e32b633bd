"""OperationOutcome resources (http://hl7.org/fhir/R4/operationoutcome.html)."""

from __future__ import annotations

from fhirserver.errors import Issue


def operation_outcome(issues: list[Issue]) -> dict:
    out = []
    for issue in issues:
        item: dict = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = list(issue.expression)
        out.append(item)
    return {"resourceType": "OperationOutcome", "issue": out}
