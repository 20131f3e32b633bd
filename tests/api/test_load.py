"""``fhirserver load``: ndjson files and folders of transaction Bundles, checked over the HTTP API.

The command runs through click's CliRunner against the test database; what it
stored is read back through the FHIR API, as a client would see it.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import orjson
from click.testing import CliRunner

from fhirserver.bulk.load import find_sources, run
from fhirserver.cli import main
from tests.api import synthea
from tests.api.helpers import BASE, put
from tests.conftest import FHIR_DATA

BULK = FHIR_DATA / "synthea" / "bulk-10-patients"
NPI = "http://hl7.org/fhir/sid/us-npi"


def _load(settings, *paths: Path, options: tuple[str, ...] = ()):
    return CliRunner().invoke(
        main, ["load", *map(str, paths), "--database", settings.database_url, *options]
    )


def _total(client, query: str) -> int:
    sep = "&" if "?" in query else "?"
    response = client.get(f"{BASE}/{query}{sep}_summary=count")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["total"]


def _all(client, query: str) -> list[dict]:
    found, url = [], f"{BASE}/{query}"
    while url:
        bundle = client.get(url).get_json()
        found += [e["resource"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        url = url.replace("http://localhost", "") if url else None
    return found


def _versions(client, resource_type: str) -> dict[str, tuple[str, str]]:
    return {
        r["id"]: (r["meta"]["versionId"], r["meta"]["lastUpdated"])
        for r in _all(client, f"{resource_type}?_count=1000")
    }


def _ndjson(path: Path, *lines: dict | str) -> Path:
    path.write_text(
        "".join(
            (line if isinstance(line, str) else orjson.dumps(line).decode()) + "\n"
            for line in lines
        )
    )
    return path


def _practitioner(id: str, npi: str) -> dict:
    return {
        "resourceType": "Practitioner",
        "id": id,
        "identifier": [{"system": NPI, "value": npi}],
        "name": [{"family": f"Doctor {id}"}],
    }


def _encounter(id: str, practitioner_reference: str) -> dict:
    return {
        "resourceType": "Encounter",
        "id": id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "participant": [{"individual": {"reference": practitioner_reference}}],
    }


# --------------------------------------------------------------------------
# The Synthea data
# --------------------------------------------------------------------------


def test_every_synthea_bundle_loads_with_its_counts_and_references_and_a_reload_changes_nothing(
    client, settings
):
    expected: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for path in sorted(synthea.BUNDLES.glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            key = (entry["resource"]["resourceType"], entry["fullUrl"].removeprefix("urn:uuid:"))
            if key not in seen:  # patient bundles repeat the shared Organizations/Practitioners
                seen.add(key)
                expected[key[0]] += 1
    entries = sum(
        1
        for path in synthea.BUNDLES.glob("*.json")
        for _ in orjson.loads(path.read_bytes())["entry"]
    )

    result = _load(settings, synthea.BUNDLES)
    assert result.exit_code == 0, result.output
    assert (
        f"12 files, {entries} resources read, {len(seen)} created, "
        f"{entries - len(seen)} already present, 0 rejected" in result.stdout
    )
    assert {t: _total(client, t) for t in expected} == dict(expected)

    # urn:uuid references became Type/uuid of stored resources.
    patient = _all(client, "Patient?_count=1")[0]
    observations = _all(client, f"Observation?subject=Patient/{patient['id']}&_count=1000")
    assert observations
    encounter_ref = observations[0]["encounter"]["reference"]
    assert encounter_ref.startswith("Encounter/")
    assert client.get(f"{BASE}/{encounter_ref}").status_code == 200
    claim = _all(client, f"Claim?patient={patient['id']}&_count=1")[0]
    assert client.get(f"{BASE}/{claim['provider']['reference']}").status_code == 200

    before = {t: _versions(client, t) for t in ("Patient", "Organization", "Practitioner")}
    history_before = len(_all(client, "_history?_count=1000"))
    assert history_before == len(seen)

    again = _load(settings, synthea.BUNDLES)
    assert again.exit_code == 0, again.output
    assert f"{entries} resources read, 0 created, {entries} already present" in again.stdout
    assert {t: _total(client, t) for t in expected} == dict(expected)
    assert {t: _versions(client, t) for t in before} == before
    assert len(_all(client, "_history?_count=1000")) == history_before


def test_synthea_bulk_ndjson_loads_with_every_conditional_reference_resolved(client, settings):
    lines = {
        path.name.split(".")[0]: sum(1 for line in path.read_bytes().splitlines() if line.strip())
        for path in BULK.glob("*.000.ndjson")
    }
    result = _load(settings, BULK, options=("--workers", "2"))
    assert result.exit_code == 0, result.output
    total = sum(lines.values())
    assert f"13 files, {total} resources read, {total} created" in result.stdout
    assert "0 rejected" in result.stdout
    assert "skipped" in result.stderr and "log.ndjson" in result.stderr
    assert {t: _total(client, t) for t in lines} == lines

    practitioners = {
        p["id"]: p["identifier"][0]["value"] for p in _all(client, "Practitioner?_count=1000")
    }
    locations = {loc["id"] for loc in _all(client, "Location?_count=1000")}
    encounters = _all(client, "Encounter?_count=1000")
    assert len(encounters) == lines["Encounter"]
    raw = {
        e["id"]: e
        for e in map(orjson.loads, (BULK / "Encounter.000.ndjson").read_bytes().splitlines())
    }
    for encounter in encounters:
        for participant, original in zip(
            encounter["participant"], raw[encounter["id"]]["participant"], strict=True
        ):
            kind, _, practitioner_id = participant["individual"]["reference"].partition("/")
            assert kind == "Practitioner" and practitioner_id in practitioners
            # ...the very Practitioner the conditional reference named by NPI.
            npi = original["individual"]["reference"].rsplit("|", 1)[1]
            assert practitioners[practitioner_id] == npi
        kind, _, location_id = encounter["location"][0]["location"]["reference"].partition("/")
        assert kind == "Location" and location_id in locations
        assert "?" not in encounter["serviceProvider"]["reference"]

    # Searchable through the rewritten references.
    some = encounters[0]["participant"][0]["individual"]["reference"]
    assert _total(client, f"Encounter?participant={some}") >= 1

    # A second load (one process) creates nothing and resolves to the same ids.
    again = _load(settings, BULK)
    assert again.exit_code == 0, again.output
    assert f"{total} resources read, 0 created, {total} already present" in again.stdout
    assert _all(client, "Encounter?_count=1000") == encounters


# --------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------


def test_an_invalid_line_is_rejected_with_file_and_line_and_the_rest_loads(
    client, settings, tmp_path
):
    path = _ndjson(
        tmp_path / "Patient.ndjson",
        {"resourceType": "Patient", "id": "good-1"},
        {"resourceType": "Patient", "id": "bad-date", "birthDate": "yesterday"},
        "",
        "{not json",
        {"resourceType": "Patient", "id": "good-2"},
        {"resourceType": "NoSuchType", "id": "x"},
    )
    result = _load(settings, path)
    assert result.exit_code == 1
    assert f"rejected {path}:2: " in result.stderr and "birthDate" in result.stderr
    assert f"rejected {path}:4: not valid JSON" in result.stderr
    assert f"rejected {path}:6: " in result.stderr and "NoSuchType" in result.stderr
    # The blank line is no resource; the broken one counts as read and rejected.
    assert "1 files, 5 resources read, 2 created, 0 already present, 3 rejected" in result.stdout
    assert client.get(f"{BASE}/Patient/good-1").status_code == 200
    assert client.get(f"{BASE}/Patient/good-2").status_code == 200
    assert client.get(f"{BASE}/Patient/bad-date").status_code == 404


def test_unresolvable_and_ambiguous_conditional_references_are_rejected(client, settings, tmp_path):
    put(client, _practitioner("stored", "1111111111"))
    put(client, _practitioner("twin-a", "2222222222"))
    put(client, _practitioner("twin-b", "2222222222"))
    path = _ndjson(
        tmp_path / "Encounter.ndjson",
        _encounter("resolved", f"Practitioner?identifier={NPI}|1111111111"),
        _encounter("nobody", f"Practitioner?identifier={NPI}|0000000000"),
        _encounter("twins", f"Practitioner?identifier={NPI}|2222222222"),
        _encounter("unknown-parameter", "Practitioner?no-such-parameter=1"),
    )
    result = _load(settings, path)
    assert result.exit_code == 1
    assert (
        f"rejected {path}:2: conditional reference `Practitioner?identifier={NPI}|0000000000` "
        "is unresolvable: no Practitioner matches"
    ) in result.stderr
    assert f"rejected {path}:3: conditional reference" in result.stderr
    assert "is ambiguous" in result.stderr
    assert f"rejected {path}:4: conditional reference" in result.stderr
    assert "no-such-parameter" in result.stderr
    assert "4 resources read, 1 created, 0 already present, 3 rejected" in result.stdout

    resolved = client.get(f"{BASE}/Encounter/resolved").get_json()
    assert resolved["participant"][0]["individual"]["reference"] == "Practitioner/stored"
    for rejected in ("nobody", "twins", "unknown-parameter"):
        assert client.get(f"{BASE}/Encounter/{rejected}").status_code == 404


def test_a_folder_loads_reference_targets_first_and_resolves_what_it_read_so_far(
    client, settings, tmp_path
):
    # Encounter.ndjson sorts before Practitioner.ndjson; the loader must not follow that order.
    _ndjson(tmp_path / "Encounter.ndjson", _encounter("e1", f"Practitioner?identifier={NPI}|42"))
    nested = tmp_path / "nested"
    nested.mkdir()
    with gzip.open(nested / "Practitioner.ndjson.gz", "wt") as f:
        f.write(orjson.dumps(_practitioner("p42", "42")).decode() + "\n")
    # In one file, a reference to a resource read a few lines earlier (still in the batch).
    _ndjson(
        tmp_path / "Mixed.ndjson",
        _practitioner("p43", "43"),
        _encounter("e2", f"Practitioner?identifier={NPI}|43"),
    )
    result = _load(settings, tmp_path, options=("--batch-size", "50"))
    assert result.exit_code == 0, result.output
    assert "3 files, 4 resources read, 4 created" in result.stdout
    e1 = client.get(f"{BASE}/Encounter/e1").get_json()
    assert e1["participant"][0]["individual"]["reference"] == "Practitioner/p42"
    e2 = client.get(f"{BASE}/Encounter/e2").get_json()
    assert e2["participant"][0]["individual"]["reference"] == "Practitioner/p43"


# --------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------


def test_conditional_creates_in_a_bundle_reuse_the_stored_match(client, settings, tmp_path):
    put(
        client,
        {
            "resourceType": "Organization",
            "id": "stored-org",
            "identifier": [{"system": "urn:test", "value": "org-1"}],
        },
    )
    org_url, patient_url = (
        "urn:uuid:0b8a2b1e-1c43-4c5a-9d7e-4e2f7d6c5a01",
        "urn:uuid:5e7c2d3a-0f61-4b0e-8b7a-2a4f1c9d8e02",
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": org_url,
                "resource": {
                    "resourceType": "Organization",
                    "identifier": [{"system": "urn:test", "value": "org-1"}],
                },
                "request": {
                    "method": "POST",
                    "url": "Organization",
                    "ifNoneExist": "identifier=urn:test|org-1",
                },
            },
            {
                "fullUrl": patient_url,
                "resource": {
                    "resourceType": "Patient",
                    "managingOrganization": {"reference": org_url},
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "http://example.org/fhir/Patient/put-1",
                "resource": {
                    "resourceType": "Patient",
                    "id": "put-1",
                    "link": [{"other": {"reference": patient_url}, "type": "seealso"}],
                },
                "request": {"method": "PUT", "url": "Patient/put-1"},
            },
            {"request": {"method": "DELETE", "url": "Patient/put-1"}},
        ],
    }
    path = tmp_path / "bundle.json"
    path.write_bytes(orjson.dumps(bundle))
    result = _load(settings, path)
    assert result.exit_code == 1  # the DELETE entry
    assert f"rejected {path}:Bundle.entry[3]: the entry has no resource" in result.stderr
    assert "4 resources read, 2 created, 1 already present, 1 rejected" in result.stdout

    assert _total(client, "Organization") == 1
    patient_id = patient_url.removeprefix("urn:uuid:")
    patient = client.get(f"{BASE}/Patient/{patient_id}").get_json()
    assert patient["managingOrganization"]["reference"] == "Organization/stored-org"
    linked = client.get(f"{BASE}/Patient/put-1").get_json()
    assert linked["link"][0]["other"]["reference"] == f"Patient/{patient_id}"

    again = _load(settings, path)
    assert "4 resources read, 0 created, 3 already present, 1 rejected" in again.stdout


def test_single_resources_without_an_id_load_once(client, settings, tmp_path):
    (tmp_path / "one.json").write_bytes(
        orjson.dumps({"resourceType": "Patient", "name": [{"family": "Ohneid"}]})
    )
    (tmp_path / "package.json").write_bytes(orjson.dumps({"name": "not fhir"}))
    for _ in range(2):
        result = _load(settings, tmp_path)
        assert result.exit_code == 0, result.output
        assert "skipped" in result.stderr and "package.json" in result.stderr
    assert _total(client, "Patient?family=ohneid") == 1


# --------------------------------------------------------------------------
# The functions under the command, and its usage errors
# --------------------------------------------------------------------------


def test_a_big_ndjson_file_splits_into_chunks_that_keep_their_line_numbers(
    client, settings, tmp_path
):
    rows: list[dict | str] = [{"resourceType": "Patient", "id": f"p{i}"} for i in range(1, 41)]
    rows[29] = {"resourceType": "Patient", "id": "p30", "gender": 7}
    path = _ndjson(tmp_path / "Patient.ndjson", *rows)
    plan = find_sources([path], chunk_bytes=200)
    assert len(plan.sources) > 3 and sum(s.size for s in plan.sources) == path.stat().st_size
    report = run(settings.database_url, plan, batch_size=7, workers=2)
    assert (report.read, report.created, report.rejected) == (40, 39, 1)
    assert report.rejections[0].location == f"{path}:30"
    assert "gender" in report.rejections[0].reason
    assert _total(client, "Patient") == 39


def test_paths_that_cannot_be_loaded_are_usage_errors(settings, tmp_path):
    missing = _load(settings, tmp_path / "nothing-here.ndjson")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "notes.txt").write_text("hello")
    wrong = _load(settings, tmp_path / "notes.txt")
    assert wrong.exit_code == 2 and "is not a .ndjson" in wrong.output


def test_a_conditional_create_matching_several_resources_is_rejected(client, settings, tmp_path):
    for id in ("org-a", "org-b"):
        put(
            client,
            {
                "resourceType": "Organization",
                "id": id,
                "identifier": [{"system": "urn:test", "value": "same"}],
            },
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": "urn:uuid:8d0a3f52-6c1b-4f7e-a2d9-3b5e7c9f1a03",
                "resource": {"resourceType": "Organization", "name": "Third"},
                "request": {
                    "method": "POST",
                    "url": "Organization",
                    "ifNoneExist": "identifier=urn:test|same",
                },
            }
        ],
    }
    path = tmp_path / "batch.json.gz"
    path.write_bytes(gzip.compress(orjson.dumps(bundle)))
    result = _load(settings, path)
    assert result.exit_code == 1
    assert (
        f"rejected {path}:Bundle.entry[0]: ifNoneExist `identifier=urn:test|same` "
        "matches 2 Organization resources"
    ) in result.stderr
    assert _total(client, "Organization") == 2
