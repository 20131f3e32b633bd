"""Real data nobody here wrote: every non-Bundle official R4 example round-trips through PUT and read.

The examples are in ../shared/fhir-data/r4-examples/ (HL7's hl7.fhir.r4.examples 4.0.1).
Known R4-vs-R4B model differences are listed in docs/KNOWN-LIMITS.md and marked
xfail(strict=True) here, so a fix shows up as a failure to update the list.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from fhirserver.interactions.pipeline import APPEND_ONLY
from fhirserver.resources import jsonio
from tests.api.helpers import BASE, FHIR_JSON, FHIR_XML
from tests.conftest import FHIR_DATA

#: file name -> why the R4B models reject or change it (see docs/KNOWN-LIMITS.md).
KNOWN_R4B_DIFFERENCES: dict[str, str] = {}


def _examples() -> list:
    folder = FHIR_DATA / "r4-examples"
    files = sorted(p for p in folder.glob("*.json") if not p.name.startswith("Bundle-"))
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=KNOWN_R4B_DIFFERENCES[p.name]))
        if p.name in KNOWN_R4B_DIFFERENCES
        else p
        for p in files
    ]


def _load(data: bytes) -> dict:
    # Decimals compare by value with their digits kept (1.00 == 1.0, 1E+3 == 1000).
    return jsonio.loads(data)


def _canonical_narratives(value):
    """Narrative divs compared as canonical XML: the XML form cannot keep a JSON string's choice of escapes."""
    if isinstance(value, dict):
        return {
            k: etree.tostring(etree.fromstring(v.encode()), method="c14n")
            if k == "div" and isinstance(v, str)
            else _canonical_narratives(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_canonical_narratives(v) for v in value]
    return value


def _without_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "meta"}


def _meta_rest(resource: dict) -> dict:
    return {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_round_trips_as_json(client, path: Path):
    original = _load(path.read_bytes())
    url = f"{BASE}/{original['resourceType']}/{original['id']}"
    response = client.put(url, data=path.read_bytes(), headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 201, response.get_data(as_text=True)
    stored = _load(client.get(url).data)
    assert _without_meta(stored) == _without_meta(original)
    assert _meta_rest(stored) == _meta_rest(original)


@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_example_round_trips_as_xml(client, path: Path):
    original = _load(path.read_bytes())
    url = f"{BASE}/{original['resourceType']}/{original['id']}"
    assert (
        client.put(url, data=path.read_bytes(), headers={"Content-Type": FHIR_JSON}).status_code
        == 201
    )
    xml = client.get(url, headers={"Accept": FHIR_XML})
    assert xml.status_code == 200
    # The XML goes back in as an update, and the JSON read of it must equal the original.
    data, expected = xml.data, 200
    if original["resourceType"] in APPEND_ONLY:
        # Stored AuditEvents never change: the XML comes back as a new one.
        url += "-xml"
        data = data.replace(
            f'<id value="{original["id"]}"/>'.encode(),
            f'<id value="{original["id"]}-xml"/>'.encode(),
            1,
        )
        expected = 201
    again = client.put(url, data=data, headers={"Content-Type": FHIR_XML})
    assert again.status_code == expected, again.get_data(as_text=True)
    stored = _load(client.get(url).data)
    stored["id"] = original["id"]
    assert _canonical_narratives(_without_meta(stored)) == _canonical_narratives(
        _without_meta(original)
    )
