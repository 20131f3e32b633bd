"""AuditEvents are append-only through the API: create yes, change or delete never (405)."""

from __future__ import annotations

import orjson
import pytest

from tests.api.helpers import BASE, FHIR_JSON, created_id, outcome_text, post
from tests.conftest import FHIR_DATA


@pytest.fixture
def event(client) -> str:
    example = orjson.loads((FHIR_DATA / "r4-examples" / "AuditEvent-example.json").read_bytes())
    example.pop("id")
    response = post(client, example)
    assert response.status_code == 201
    return created_id(response)


def _stored_version(client, id: str) -> str:
    return client.get(f"{BASE}/AuditEvent/{id}").get_json()["meta"]["versionId"]


def test_audit_events_cannot_be_updated_patched_or_deleted(client, event):
    body = client.get(f"{BASE}/AuditEvent/{event}").get_json()
    attempts = [
        client.put(
            f"{BASE}/AuditEvent/{event}",
            data=orjson.dumps({**body, "outcome": "8"}),
            headers={"Content-Type": FHIR_JSON},
        ),
        client.patch(
            f"{BASE}/AuditEvent/{event}",
            data=orjson.dumps([{"op": "replace", "path": "/outcome", "value": "8"}]),
            headers={"Content-Type": "application/json-patch+json"},
        ),
        client.delete(f"{BASE}/AuditEvent/{event}"),
        client.delete(f"{BASE}/AuditEvent?_id={event}"),
        client.post(
            f"{BASE}/AuditEvent/{event}/$meta-add",
            data=orjson.dumps(
                {
                    "resourceType": "Parameters",
                    "parameter": [{"name": "meta", "valueMeta": {"tag": [{"code": "x"}]}}],
                }
            ),
            headers={"Content-Type": FHIR_JSON},
        ),
    ]
    for response in attempts:
        assert response.status_code == 405, response.get_data(as_text=True)
        assert "append-only" in outcome_text(response)
    assert _stored_version(client, event) == "1"
    assert client.get(f"{BASE}/AuditEvent/{event}").get_json()["outcome"] == body["outcome"]


def test_a_transaction_that_would_delete_an_audit_event_changes_nothing(client, event):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "DELETE", "url": f"AuditEvent/{event}"}},
        ],
    }
    response = client.post(BASE, data=orjson.dumps(bundle), headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 405
    assert "Bundle.entry[1]" in outcome_text(response)
    assert client.get(f"{BASE}/Patient?_summary=count").get_json()["total"] == 0
    assert client.get(f"{BASE}/AuditEvent/{event}").status_code == 200


def test_a_new_audit_event_may_be_put_under_its_own_id(client, event):
    body = client.get(f"{BASE}/AuditEvent/{event}").get_json()
    body.pop("meta")
    body["id"] = "brand-new"
    response = client.put(
        f"{BASE}/AuditEvent/brand-new", data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 201
