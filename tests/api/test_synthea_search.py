"""Search over real Synthea data (../shared/fhir-data/synthea/bundles), checked against the data itself."""

from __future__ import annotations

from collections import Counter
from urllib.parse import quote

from tests.api import synthea
from tests.api.helpers import BASE


def _all_ids(client, query: str) -> list[str]:
    found, url = [], f"{BASE}/{query}"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = response.get_json()
        found += [
            e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
        ]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        url = url.replace("http://localhost", "") if url else None
    return found


def test_synthea_patients_load_and_answer_searches_like_the_data(client):
    first, second = synthea.patient_bundles()[:2]
    resources = synthea.load(client, first) + synthea.load(client, second)
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert len(patients) == 2 and observations

    patient = patients[0]
    family = patient["name"][0]["family"]
    assert _all_ids(client, f"Patient?family={family[:3].lower()}") == [patient["id"]]
    assert _all_ids(client, f"Patient?birthdate={patient['birthDate']}") == [patient["id"]]

    mine = [o for o in observations if o["subject"]["reference"] == f"Patient/{patient['id']}"]
    assert sorted(_all_ids(client, f"Observation?patient={patient['id']}&_count=50")) == sorted(
        o["id"] for o in mine
    )

    # The compartment search finds the same Observations (Synthea's performers are never patients).
    assert sorted(_all_ids(client, f"Patient/{patient['id']}/Observation?_count=50")) == sorted(
        o["id"] for o in mine
    )

    # patient + code: the most common clinical query.
    code = Counter(c["code"] for o in mine for c in o["code"]["coding"]).most_common(1)[0][0]
    expected = sorted(o["id"] for o in mine if any(c["code"] == code for c in o["code"]["coding"]))
    assert (
        sorted(
            _all_ids(client, f"Observation?patient={patient['id']}&code=http://loinc.org|{code}")
        )
        == expected
    )

    # patient + date, newest first, paged.
    dated = [o for o in mine if "effectiveDateTime" in o]
    cutoff = sorted(o["effectiveDateTime"] for o in dated)[len(dated) // 2]
    later = [o for o in dated if o["effectiveDateTime"] >= cutoff]
    got = _all_ids(
        client, f"Observation?patient={patient['id']}&date=ge{quote(cutoff)}&_sort=-date&_count=7"
    )
    assert sorted(got) == sorted(o["id"] for o in later)
    times = {o["id"]: o["effectiveDateTime"] for o in later}
    assert [times[i] for i in got] == sorted(times[i] for i in got)[::-1]

    # chained and reverse-chained.
    assert (
        sorted(
            _all_ids(client, f"Observation?subject:Patient.family={family}&code={code}&_count=100")
        )
        == expected
    )
    assert _all_ids(
        client, f"Patient?_has:Observation:patient:code={code}&_id={patient['id']}"
    ) == [patient["id"]]

    # a quantity search agrees with the values in the data.
    quantities = [o for o in mine if "valueQuantity" in o and o["valueQuantity"].get("code")]
    sample = quantities[0]["valueQuantity"]
    over = sorted(
        o["id"]
        for o in quantities
        if o["valueQuantity"]["code"] == sample["code"]
        and o["valueQuantity"]["value"] > sample["value"]
    )
    query = f"Observation?patient={patient['id']}&value-quantity=gt{sample['value']}|http://unitsofmeasure.org|{sample['code']}&_count=200"
    assert sorted(_all_ids(client, query)) == over
