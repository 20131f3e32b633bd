"""Observation/$lastn and Observation/$stats.

http://hl7.org/fhir/R4/observation-operation-lastn.html: per patient and code
the ``max`` most recent Observations of an Observation search.
http://hl7.org/fhir/R4/observation-operation-stats.html: statistics of a
subject's values of a code over a period, on canonical UCUM values.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from statistics import mean

import orjson
import pytest

from tests.api import synthea
from tests.api.helpers import BASE, FHIR_JSON, outcome_text, put

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
STATISTICS = "http://hl7.org/fhir/observation-statistics"


def _observation(
    id: str,
    patient: str,
    code: str,
    when: str | None,
    value: float | None = None,
    unit: str | None = None,
    *,
    codings: list[dict] | None = None,
    **extra,
) -> dict:
    resource: dict = {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}, *(codings or [])]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }
    if when is not None:
        resource["effectiveDateTime"] = when
    if value is not None:
        resource["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": unit}
    return resource


def _ids(response) -> set[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return {
        e["resource"]["id"]
        for e in response.get_json().get("entry", [])
        if e["search"]["mode"] == "match"
    }


def _link(bundle: dict, relation: str) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == relation), None)


# -- $lastn ------------------------------------------------------------------------

VITALS = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "code": "vital-signs",
            }
        ]
    }
]


@pytest.fixture
def series(client):
    for patient in ("p1", "p2"):
        put(client, {"resourceType": "Patient", "id": patient})
    for id, when, value in (
        ("hr-1", "2024-01-01T08:00:00Z", 70),
        ("hr-2", "2024-02-01T08:00:00Z", 72),
        ("hr-3", "2024-03-01T08:00:00Z", 75),
        ("hr-undated", None, 60),
    ):
        put(client, _observation(id, "p1", "8867-4", when, value, "/min", category=VITALS))
    put(client, _observation("glu-1", "p1", "2339-0", "2024-01-15", 90, "mg/dL"))
    put(client, _observation("glu-2", "p1", "2339-0", "2024-02-15", 95, "mg/dL"))
    # Same effective time: ties go by id.
    put(client, _observation("temp-b", "p1", "8310-5", "2024-05-01T08:00:00Z", 37.1, "Cel"))
    put(client, _observation("temp-a", "p1", "8310-5", "2024-05-01T08:00:00Z", 36.9, "Cel"))
    # Two codings: each is a group of its own.
    local = [{"system": "urn:local", "code": "W"}]
    put(client, _observation("wt-1", "p1", "29463-7", "2024-06-01", 80, "kg", codings=local))
    put(client, _observation("wt-2", "p1", "29463-7", "2024-07-01", 79, "kg"))
    for id, when in (("hr-b1", "2024-01-10"), ("hr-b2", "2024-04-01")):
        put(client, _observation(id, "p2", "8867-4", when, 66, "/min", category=VITALS))


def _lastn(client, query: str, **headers):
    return client.get(f"{BASE}/Observation/$lastn?{query}", headers=headers)


def test_lastn_gives_the_most_recent_of_each_code(client, series):
    assert _ids(_lastn(client, "patient=p1")) == {"hr-3", "glu-2", "temp-a", "wt-2", "wt-1"}
    assert _ids(_lastn(client, "patient=p1&max=2")) == {
        "hr-3",
        "hr-2",
        "glu-2",
        "glu-1",
        "temp-a",
        "temp-b",
        "wt-2",
        "wt-1",
    }


def test_lastn_groups_by_patient(client, series):
    assert _ids(_lastn(client, "code=8867-4")) == {"hr-3", "hr-b2"}
    assert _ids(_lastn(client, "code=8867-4&max=2&subject=Patient/p2")) == {"hr-b1", "hr-b2"}


def test_lastn_named_codes_form_the_groups(client, series):
    # wt-1 also carries a local coding, but only the LOINC group was asked for.
    assert _ids(_lastn(client, f"patient=p1&code={LOINC}|29463-7")) == {"wt-2"}


def test_lastn_undated_observations_come_last(client, series):
    assert _ids(_lastn(client, "patient=p1&code=8867-4&max=3")) == {"hr-1", "hr-2", "hr-3"}
    assert _ids(_lastn(client, "patient=p1&code=8867-4&max=10")) == {
        "hr-1",
        "hr-2",
        "hr-3",
        "hr-undated",
    }


def test_lastn_takes_the_search_parameters(client, series):
    assert _ids(_lastn(client, "category=vital-signs&patient=p1&max=2")) == {"hr-3", "hr-2"}
    assert _ids(_lastn(client, "patient=p1&code=8867-4&date=lt2024-02-15")) == {"hr-2"}
    assert _ids(_lastn(client, "patient=nobody")) == set()


def test_lastn_pages_visit_every_observation_once(client, series):
    whole = _ids(_lastn(client, "patient=p1&max=2"))
    seen: list[str] = []
    url = f"{BASE}/Observation/$lastn?patient=p1&max=2&_count=3"
    pages = 0
    while url:
        bundle = client.get(url.replace("http://localhost", "")).get_json()
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = _link(bundle, "next")
        if url:
            assert url.startswith("http://localhost/fhir/Observation/$lastn?")
            assert "max=2" in url
        pages += 1
    assert pages == 3
    assert len(seen) == len(set(seen))
    assert set(seen) == whole


def test_lastn_total_and_ignored_parameters(client, series):
    bundle = _lastn(client, "patient=p1&_total=accurate&_sort=-date").get_json()
    assert bundle["total"] == 5
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "_sort" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert _lastn(client, "patient=p1&_sort=-date", Prefer="handling=strict").status_code == 400


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5", ""])
def test_lastn_bad_max_is_400(client, series, value):
    response = _lastn(client, f"patient=p1&max={value}")
    assert response.status_code == 400
    assert "max" in outcome_text(response)


def test_lastn_bad_search_parameter_is_400(client, series):
    assert _lastn(client, "patient=p1&date=notadate").status_code == 400


def test_lastn_on_a_synthea_patient(client):
    resources = synthea.load(client, synthea.patient_bundles()[0])
    patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
    groups: dict[tuple, list[dict]] = {}
    for resource in resources:
        if resource["resourceType"] != "Observation":
            continue
        for coding in resource["code"]["coding"]:
            groups.setdefault((coding["system"], coding["code"]), []).append(resource)
    expected = set()
    for members in groups.values():
        members.sort(key=lambda o: o["id"])
        members.sort(key=lambda o: datetime.fromisoformat(o["effectiveDateTime"]), reverse=True)
        expected |= {o["id"] for o in members[:3]}
    assert _ids(_lastn(client, f"patient={patient}&max=3")) == expected
    vitals = _ids(_lastn(client, f"patient={patient}&category=vital-signs"))
    assert vitals and vitals < expected


# -- $stats ------------------------------------------------------------------------


@pytest.fixture
def values(client):
    for patient in ("s1", "s2"):
        put(client, {"resourceType": "Patient", "id": patient})
    # 0.9, 1.1 and 0.8 g/L: the middle one is the largest, in another unit.
    put(client, _observation("g-1", "s1", "2339-0", "2024-01-10T09:00:00Z", 90, "mg/dL"))
    put(client, _observation("g-2", "s1", "2339-0", "2024-02-10T09:00:00Z", 1.1, "g/L"))
    put(client, _observation("g-3", "s1", "2339-0", "2024-03-10T09:00:00Z", 80, "mg/dL"))
    put(client, _observation("g-other", "s2", "2339-0", "2024-02-10T09:00:00Z", 500, "mg/dL"))
    mistaken = _observation("g-error", "s1", "2339-0", "2024-02-11T09:00:00Z", 900, "mg/dL")
    put(client, {**mistaken, "status": "entered-in-error"})
    for id, when, systolic, diastolic in (
        ("bp-1", "2024-01-05T09:00:00Z", 120, 80),
        ("bp-2", "2024-02-05T09:00:00Z", 130, 85),
    ):
        put(
            client,
            {
                **_observation(id, "s1", "85354-9", when),
                "component": [
                    {
                        "code": {"coding": [{"system": LOINC, "code": code}]},
                        "valueQuantity": {
                            "value": v,
                            "unit": "mmHg",
                            "system": UCUM,
                            "code": "mm[Hg]",
                        },
                    }
                    for code, v in (("8480-6", systolic), ("8462-4", diastolic))
                ],
            },
        )


def _stats(client, query: str):
    return client.get(f"{BASE}/Observation/$stats?{query}")


def _statistics(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "Parameters"
    return [p["resource"] for p in body["parameter"] if p["name"] == "statistics"]


def _components(observation: dict) -> dict[str, object]:
    """statistic code -> value (a number, or the Quantity's unit check done by the caller)."""
    out: dict[str, object] = {}
    for component in observation["component"]:
        code = component["code"]["coding"][0]["code"]
        if "valueInteger" in component:
            out[code] = component["valueInteger"]
        elif "valueQuantity" in component:
            out[code] = Decimal(str(component["valueQuantity"]["value"]))
        else:
            out[code] = None
    return out


ALL = "count,minimum,maximum,average,sum,std-dev,first,last"


def test_stats_compare_ucum_equivalent_units_on_their_canonical_value(client, values):
    (observation,) = _statistics(
        _stats(client, f"subject=Patient/s1&code=2339-0&system={LOINC}&statistic={ALL}")
    )
    assert observation["status"] == "final"
    assert observation["code"]["coding"] == [{"system": LOINC, "code": "2339-0"}]
    assert observation["subject"] == {"reference": "Patient/s1"}
    assert observation["effectivePeriod"] == {
        "start": "2024-01-10T09:00:00Z",
        "end": "2024-03-10T09:00:00Z",
    }
    stats = _components(observation)
    assert stats["count"] == 3
    # Reported in the unit of the most recent value (mg/dL).
    assert stats["minimum"] == 80 and stats["maximum"] == 110
    assert stats["sum"] == 280
    assert stats["first"] == 90 and stats["last"] == 80
    assert abs(stats["average"] - Decimal("93.3333333333")) < Decimal("1e-9")
    assert abs(stats["std-dev"] - Decimal("15.2752523165")) < Decimal("1e-9")
    units = {c["valueQuantity"]["code"] for c in observation["component"] if "valueQuantity" in c}
    assert units == {"mg/dL"}
    codes = {c["code"]["coding"][0]["system"] for c in observation["component"]}
    assert STATISTICS in codes


def test_stats_over_a_period_report_in_the_unit_of_the_last_value(client, values):
    (observation,) = _statistics(
        _stats(
            client,
            "subject=Patient/s1&code=2339-0&statistic=count,average&period=2024-02-01/2024-02-28",
        )
    )
    assert observation["effectivePeriod"] == {
        "start": "2024-02-01T00:00:00Z",
        "end": "2024-02-29T00:00:00Z",
    }
    assert _components(observation) == {"count": 1, "average": Decimal("1.1")}
    average = next(c for c in observation["component"] if "valueQuantity" in c)
    assert average["valueQuantity"]["code"] == "g/L"


def test_stats_duration_counts_back_from_now(client, values):
    recent = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    put(client, _observation("g-now", "s1", "2339-0", recent, 100, "mg/dL"))
    (observation,) = _statistics(
        _stats(client, "subject=Patient/s1&code=2339-0&statistic=count,last&duration=24")
    )
    assert _components(observation) == {"count": 1, "last": 100}


def test_stats_of_component_codes_and_panels(client, values):
    (systolic,) = _statistics(
        _stats(client, "subject=Patient/s1&code=8480-6&statistic=count,average,first,last")
    )
    assert _components(systolic) == {"count": 2, "average": 125, "first": 120, "last": 130}
    panel = _statistics(_stats(client, "subject=Patient/s1&code=85354-9&statistic=count,maximum"))
    assert {o["code"]["coding"][0]["code"]: _components(o) for o in panel} == {
        "8462-4": {"count": 2, "maximum": 85},
        "8480-6": {"count": 2, "maximum": 130},
    }
    # The panel and one of its components: that component is counted once.
    both = _statistics(_stats(client, "subject=Patient/s1&code=85354-9,8480-6&statistic=count"))
    assert {o["code"]["coding"][0]["code"]: _components(o)["count"] for o in both} == {
        "8462-4": 2,
        "8480-6": 2,
    }


def test_stats_keeps_incompatible_units_apart(client, values):
    put(client, _observation("g-molar", "s1", "2339-0", "2024-04-01", 5.5, "mmol/L"))
    found = _statistics(_stats(client, "subject=Patient/s1&code=2339-0&statistic=count,last"))
    by_unit = {
        next(
            c["valueQuantity"]["code"] for c in o["component"] if "valueQuantity" in c
        ): _components(o)
        for o in found
    }
    assert by_unit == {
        "mg/dL": {"count": 3, "last": 80},
        "mmol/L": {"count": 1, "last": Decimal("5.5")},
    }


def test_stats_of_a_code_without_values(client, values):
    (observation,) = _statistics(
        _stats(client, f"subject=Patient/s2&coding={LOINC}|8480-6&statistic=count,average")
    )
    assert observation["code"]["coding"] == [{"system": LOINC, "code": "8480-6"}]
    count, average = observation["component"]
    assert count["valueInteger"] == 0
    assert "valueQuantity" not in average and average["dataAbsentReason"]["coding"][0]["code"]


def test_stats_include_returns_the_sources_most_recent_first(client, values):
    response = _stats(client, "subject=Patient/s1&code=2339-0&statistic=count&include=true&limit=2")
    assert response.status_code == 200
    sources = [
        p["resource"]["id"] for p in response.get_json()["parameter"] if p["name"] == "source"
    ]
    assert sources == ["g-3", "g-2"]
    without = _stats(client, "subject=Patient/s1&code=2339-0&statistic=count&limit=2")
    assert [p["name"] for p in without.get_json()["parameter"]] == ["statistics"]


def test_stats_by_post_with_parameters(client, values):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueUri": "Patient/s1"},
            {"name": "coding", "valueCoding": {"system": LOINC, "code": "2339-0"}},
            {"name": "period", "valuePeriod": {"start": "2024-01-01", "end": "2024-02-28"}},
            {"name": "statistic", "valueCode": "minimum"},
            {"name": "statistic", "valueCode": "max"},
            {"name": "include", "valueBoolean": True},
        ],
    }
    response = client.post(
        f"{BASE}/Observation/$stats", data=orjson.dumps(body), headers={"Content-Type": FHIR_JSON}
    )
    (observation,) = _statistics(response)
    assert _components(observation) == {"minimum": Decimal("0.9"), "maximum": Decimal("1.1")}
    sources = [
        p["resource"]["id"] for p in response.get_json()["parameter"] if p["name"] == "source"
    ]
    assert sources == ["g-2", "g-1"]


@pytest.mark.parametrize(
    "query, status, why",
    [
        ("code=2339-0&statistic=count", 400, "subject"),
        ("subject=Patient/s1&code=2339-0", 400, "statistic"),
        ("subject=Patient/s1&code=2339-0&statistic=median", 400, "median"),
        ("subject=Patient/nobody&code=2339-0&statistic=count", 404, "Patient/nobody"),
        ("subject=Patient/s1&statistic=count&duration=abc", 400, "duration"),
        ("subject=Patient/s1&statistic=count&duration=-2", 400, "duration"),
        ("subject=Patient/s1&statistic=count&period=lately", 400, "period"),
        ("subject=Patient/s1&statistic=count&period=2024-03-01/2024-01-01", 400, "period"),
        ("subject=Patient/s1&statistic=count&period=2024-13-01/", 400, "period.start"),
        ("subject=Patient/s1&statistic=count&include=maybe", 400, "include"),
        ("subject=Patient/s1&statistic=count&include=true&limit=0", 400, "limit"),
        ("subject=Patient/s1&statistic=count&coding=8480-6|", 400, "code"),
    ],
)
def test_stats_bad_requests(client, values, query, status, why):
    response = _stats(client, query)
    assert response.status_code == status
    assert why in outcome_text(response)


def test_stats_of_a_deleted_subject_is_410(client, values):
    client.delete(f"{BASE}/Patient/s2")
    assert _stats(client, "subject=Patient/s2&code=2339-0&statistic=count").status_code == 410


def test_stats_on_a_synthea_patient(client):
    resources = synthea.load(client, synthea.patient_bundles()[0])
    patient = next(r for r in resources if r["resourceType"] == "Patient")["id"]
    glucose = sorted(
        (
            r
            for r in resources
            if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "2339-0"
        ),
        key=lambda o: datetime.fromisoformat(o["effectiveDateTime"]),
    )
    assert {o["valueQuantity"]["unit"] for o in glucose} == {"mg/dL"}
    numbers = [Decimal(str(o["valueQuantity"]["value"])) for o in glucose]
    (observation,) = _statistics(
        _stats(client, f"subject=Patient/{patient}&code={LOINC}|2339-0&statistic={ALL}")
    )
    stats = _components(observation)
    assert stats["count"] == len(numbers)

    def close(a, b) -> bool:
        return abs(Decimal(a) - Decimal(b)) < Decimal("1e-6")

    assert close(stats["minimum"], min(numbers)) and close(stats["maximum"], max(numbers))
    assert close(stats["average"], mean(numbers)) and close(stats["sum"], sum(numbers))
    assert close(stats["first"], numbers[0]) and close(stats["last"], numbers[-1])
