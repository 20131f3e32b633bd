"""Loading Synthea transaction Bundles for tests, until transactions exist (issue 4).

Each entry is PUT under the uuid of its ``urn:uuid:`` fullUrl, with every
``urn:uuid:`` reference rewritten to ``Type/uuid`` first — what a transaction
would do with server-assigned ids.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.api.helpers import BASE, FHIR_JSON
from tests.conftest import FHIR_DATA

BUNDLES = FHIR_DATA / "synthea" / "bundles"


def patient_bundles() -> list[Path]:
    return sorted(
        p for p in BUNDLES.glob("*.json") if not p.name.startswith(("hospital", "practitioner"))
    )


def resources_of(path: Path) -> list[dict]:
    bundle = orjson.loads(path.read_bytes())
    types = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]}
    text = path.read_text()
    for full_url, resource_type in types.items():
        text = text.replace(
            f'"{full_url}"', f'"{resource_type}/{full_url.removeprefix("urn:uuid:")}"'
        )
    rewritten = orjson.loads(text)
    out = []
    for entry in rewritten["entry"]:
        resource = entry["resource"]
        resource["id"] = entry["fullUrl"].split("/", 1)[1]
        out.append(resource)
    return out


def load(client, path: Path) -> list[dict]:
    resources = resources_of(path)
    for resource in resources:
        response = client.put(
            f"{BASE}/{resource['resourceType']}/{resource['id']}",
            data=orjson.dumps(resource),
            headers={"Content-Type": FHIR_JSON},
        )
        assert response.status_code in (200, 201), response.get_data(as_text=True)
    return resources
