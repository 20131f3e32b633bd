"""Small factories and assertions for API tests."""

from __future__ import annotations

import orjson

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
BASE = "/fhir"


def patient(family: str = "Chalmers", **extra) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Peter"]}], **extra}


def post(client, resource: dict, **headers):
    return client.post(
        f"{BASE}/{resource['resourceType']}",
        data=orjson.dumps(resource),
        headers={"Content-Type": FHIR_JSON, **headers},
    )


def put(client, resource: dict, **headers):
    return client.put(
        f"{BASE}/{resource['resourceType']}/{resource['id']}",
        data=orjson.dumps(resource),
        headers={"Content-Type": FHIR_JSON, **headers},
    )


def created_id(response) -> str:
    # Location: <base>/<type>/<id>/_history/<vid>
    return response.headers["Location"].rstrip("/").split("/")[-3]


def outcome_text(response) -> str:
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(issue.get("diagnostics", "") for issue in body["issue"])


def history_count(client, resource_type: str | None = None) -> int:
    url = f"{BASE}/{resource_type}/_history" if resource_type else f"{BASE}/_history"
    total = 0
    while url:
        bundle = client.get(url.replace("http://localhost", "")).get_json()
        total += len(bundle.get("entry", []))
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    return total
