"""Bulk ``$import`` — after https://github.com/smart-on-fhir/bulk-import/blob/master/import.md

As a client sees it: an ndjson upload (answered in the request, or as a job),
and a Parameters kick-off naming ndjson files by URL, which the server fetches
from a real HTTP server started here (its origin allowed through the
settings of a second app on the same database). The worker is driven
synchronously (``run_queued``), as ``fhirserver worker --once`` does.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from sqlalchemy import text

from fhirserver import create_app
from fhirserver.bulk import import_, jobs, worker
from fhirserver.storage.tables import metadata
from tests.api.helpers import BASE, FHIR_JSON, outcome_text, patient
from tests.conftest import FHIR_DATA

BULK = FHIR_DATA / "synthea" / "bulk-10-patients"
NDJSON = "application/fhir+ndjson"
ASYNC = {"Prefer": "respond-async", "Accept": FHIR_JSON}
#: The types others refer to by conditional reference first, then the rest.
BULK_ORDER = ("Organization", "Location", "Practitioner", "PractitionerRole")


# -- a file server and an app that may fetch from it -------------------------------


class _Files(SimpleHTTPRequestHandler):
    """Static files; ``/redirect?to=URL`` answers 302 to that URL."""

    def do_GET(self):
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """(folder, origin) of an HTTP server on 127.0.0.1 serving the folder."""
    root = tmp_path_factory.mktemp("served")
    (root / "bulk").symlink_to(BULK, target_is_directory=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def import_settings(settings, served):
    return replace(settings, import_allowed_origins=(served[1],))


@pytest.fixture(scope="session")
def import_app(import_settings):
    application = create_app(import_settings)
    yield application
    application.extensions["fhirserver"].database.dispose()


@pytest.fixture
def importer(import_app, database):
    """A client of the app that may import from the file server (the database emptied)."""
    return import_app.test_client()


@pytest.fixture
def folder(served) -> tuple[Path, str]:
    """A fresh served folder and its URL."""
    name = uuid.uuid4().hex
    path = served[0] / name
    path.mkdir()
    return path, f"{served[1]}/{name}"


# -- helpers -----------------------------------------------------------------------


def parameters(*inputs: tuple[str, str], **extra: str) -> dict:
    given = {"inputFormat": NDJSON, "inputSource": "https://other-server.example.org", **extra}
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": name, "valueString": value} for name, value in given.items()]
        + [
            {
                "name": "input",
                "part": [
                    {"name": "type", "valueCode": resource_type},
                    {"name": "url", "valueUri": url},
                ],
            }
            for resource_type, url in inputs
        ],
    }


def kick_off(client, body: dict, headers=None):
    return client.post(
        f"{BASE}/$import",
        data=orjson.dumps(body),
        headers={**(ASYNC if headers is None else headers), "Content-Type": FHIR_JSON},
    )


def upload(client, content: bytes, headers=None, content_type: str = NDJSON):
    return client.post(
        f"{BASE}/$import",
        data=content,
        headers={"Accept": FHIR_JSON, **(headers or {}), "Content-Type": content_type},
    )


def local(url: str) -> str:
    return url.replace("http://localhost", "")


def accepted(response) -> str:
    assert response.status_code == 202, response.get_data(as_text=True)
    return local(response.headers["Content-Location"])


def manifest_of(client, database, response, settings=None) -> dict:
    status = accepted(response)
    assert worker.run_queued(database, settings=settings) == 1
    answer = client.get(status)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    return answer.get_json()


def ndjson(*lines: dict | str) -> bytes:
    return b"".join(
        (line.encode() if isinstance(line, str) else orjson.dumps(line)) + b"\n" for line in lines
    )


def total(client, query: str) -> int:
    sep = "&" if "?" in query else "?"
    response = client.get(f"{BASE}/{query}{sep}_summary=count")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["total"]


def read(client, resource_type: str, id: str) -> dict:
    response = client.get(f"{BASE}/{resource_type}/{id}")
    assert response.status_code == 200, (resource_type, id)
    return response.get_json()


def without_server_meta(resource: dict) -> dict:
    """The resource less what the server stamps (meta.versionId, meta.lastUpdated)."""
    copy = orjson.loads(orjson.dumps(resource))
    meta = copy.get("meta", {})
    meta.pop("versionId", None)
    meta.pop("lastUpdated", None)
    if not meta:
        copy.pop("meta", None)
    return copy


def bulk_files() -> list[Path]:
    files = [p for p in BULK.glob("*.000.ndjson")]
    tier = {t: i for i, t in enumerate(BULK_ORDER)}
    return sorted(files, key=lambda p: (tier.get(p.name.split(".")[0], len(tier)), p.name))


def lines_of(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def error_lines(client, entry: dict) -> list[str]:
    """The diagnostics of each OperationOutcome of an error file."""
    response = client.get(local(entry["url"]), headers={"Accept": NDJSON})
    assert response.status_code == 200
    assert response.mimetype == NDJSON
    outcomes = [orjson.loads(line) for line in response.get_data().splitlines()]
    assert len(outcomes) == entry["count"]
    assert all(o["resourceType"] == "OperationOutcome" for o in outcomes)
    return [o["issue"][0]["diagnostics"] for o in outcomes]


NPI = "http://hl7.org/fhir/sid/us-npi"


def practitioner(id: str, npi: str) -> dict:
    return {
        "resourceType": "Practitioner",
        "id": id,
        "identifier": [{"system": NPI, "value": npi}],
        "name": [{"family": f"Doctor {id}"}],
    }


def encounter(id: str, practitioner_reference: str) -> dict:
    return {
        "resourceType": "Encounter",
        "id": id,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "participant": [{"individual": {"reference": practitioner_reference}}],
    }


# -- upload ------------------------------------------------------------------------


def test_an_upload_without_prefer_loads_in_the_request_and_reports_rejected_lines(client):
    content = ndjson(
        patient(id="good-1"),
        patient(id="bad-date", birthDate="yesterday"),
        "",
        "{not json",
        practitioner("doc", "42"),
        encounter("e1", f"Practitioner?identifier={NPI}|42"),
        {"resourceType": "NoSuchType", "id": "x"},
    )
    response = upload(client, content)
    assert response.status_code == 200, response.get_data(as_text=True)
    issues = response.get_json()["issue"]
    assert issues[0]["severity"] == "information"
    assert issues[0]["diagnostics"] == (
        "6 resources read: 3 created, 0 already present, 3 rejected."
    )
    rejected = [i["diagnostics"] for i in issues[1:]]
    assert [d.split(":")[0] for d in rejected] == [
        "Line 2 of the uploaded ndjson",
        "Line 4 of the uploaded ndjson",
        "Line 7 of the uploaded ndjson",
    ]
    assert "birthDate" in rejected[0] and "not valid JSON" in rejected[1]
    assert "NoSuchType" in rejected[2]
    assert all(i["severity"] == "error" for i in issues[1:])

    assert read(client, "Patient", "good-1")["meta"]["versionId"] == "1"
    assert client.get(f"{BASE}/Patient/bad-date").status_code == 404
    # The conditional reference resolved to the Practitioner read two lines before.
    e1 = read(client, "Encounter", "e1")
    assert e1["participant"][0]["individual"]["reference"] == "Practitioner/doc"

    again = upload(client, content, content_type="application/ndjson")
    assert again.status_code == 200
    assert again.get_json()["issue"][0]["diagnostics"] == (
        "6 resources read: 0 created, 3 already present, 3 rejected."
    )
    assert read(client, "Patient", "good-1")["meta"]["versionId"] == "1"


def test_an_upload_with_prefer_respond_async_becomes_a_job(client, database):
    content = ndjson(patient(id="p1"), patient(id="p2"), "{broken")
    response = upload(client, content, headers={"Prefer": "respond-async"})
    status = accepted(response)
    assert status.startswith(f"{BASE}/_bulk/import/")
    queued = client.get(status)
    assert queued.status_code == 202
    assert queued.headers["X-Progress"] and queued.headers["Retry-After"]
    assert client.get(f"{BASE}/Patient/p1").status_code == 404  # not loaded yet

    assert worker.run_queued(database) == 1
    answer = client.get(status)
    assert answer.status_code == 200
    manifest = answer.get_json()
    assert manifest["request"] == "http://localhost/fhir/$import"
    assert manifest["transactionTime"]
    assert manifest["output"] == [{"type": "Resource", "count": 2}]
    (error,) = manifest["error"]
    assert error["type"] == "OperationOutcome" and error["count"] == 1
    (diagnostics,) = error_lines(client, error)
    assert diagnostics.startswith("Line 3 of the uploaded ndjson: not valid JSON")
    assert manifest["extension"] == {"read": 3, "created": 2, "alreadyPresent": 0, "rejected": 1}
    assert {r["id"] for r in (read(client, "Patient", "p1"), read(client, "Patient", "p2"))} == {
        "p1",
        "p2",
    }
    assert worker.run_queued(database) == 0


def test_an_empty_upload_or_no_body_is_400_and_other_bodies_415(client):
    assert upload(client, b"\n \n").status_code == 400
    assert upload(client, b"id,name\n1,x\n", content_type="text/csv").status_code == 415
    response = client.post(f"{BASE}/$import", headers={"Accept": FHIR_JSON})
    assert response.status_code == 400
    assert "Parameters" in outcome_text(response)


def test_import_is_post_only(client):
    assert client.get(f"{BASE}/$import").status_code == 405


# -- by URL ------------------------------------------------------------------------


def test_the_synthea_bulk_files_import_by_url_and_a_second_import_creates_nothing(
    importer, database, served, import_settings
):
    files = bulk_files()
    origin = served[1]
    inputs = [(p.name.split(".")[0], f"{origin}/bulk/{p.name}") for p in files]
    expected = {t: len(lines_of(p)) for (t, _), p in zip(inputs, files, strict=True)}
    body = parameters(*inputs, mode="batch")

    manifest = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert manifest["request"] == "http://localhost/fhir/$import"
    assert manifest["error"] == []
    assert manifest["output"] == [
        {"type": t, "inputUrl": url, "count": expected[t]} for t, url in inputs
    ]
    count = sum(expected.values())
    assert manifest["extension"] == {
        "read": count,
        "created": count,
        "alreadyPresent": 0,
        "rejected": 0,
    }
    assert {t: total(importer, t) for t in expected} == expected

    # The stored bodies are the files' lines (plus the server's meta) ...
    for resource_type in ("Organization", "Location", "Patient", "Condition"):
        for original in lines_of(BULK / f"{resource_type}.000.ndjson")[:5]:
            stored = read(importer, resource_type, original["id"])
            assert stored["meta"]["versionId"] == "1"
            assert without_server_meta(stored) == original
    # ... with conditional references resolved to the resources they name.
    raw = lines_of(BULK / "Encounter.000.ndjson")[0]
    stored = read(importer, "Encounter", raw["id"])
    kind, _, practitioner_id = stored["participant"][0]["individual"]["reference"].partition("/")
    assert kind == "Practitioner"
    npi = raw["participant"][0]["individual"]["reference"].rsplit("|", 1)[1]
    assert read(importer, "Practitioner", practitioner_id)["identifier"][0]["value"] == npi

    again = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert again["extension"] == {
        "read": count,
        "created": 0,
        "alreadyPresent": count,
        "rejected": 0,
    }
    assert [o["count"] for o in again["output"]] == [expected[t] for t, _ in inputs]
    assert {t: total(importer, t) for t in expected} == expected
    assert read(importer, "Encounter", raw["id"])["meta"]["versionId"] == "1"


def test_reference_targets_are_imported_first_whatever_the_input_order(
    importer, database, folder, import_settings
):
    path, url = folder
    (path / "Encounter.ndjson").write_bytes(
        ndjson(encounter("e1", f"Practitioner?identifier={NPI}|77"))
    )
    (path / "Practitioner.ndjson").write_bytes(ndjson(practitioner("p77", "77")))
    body = parameters(
        ("Encounter", f"{url}/Encounter.ndjson"), ("Practitioner", f"{url}/Practitioner.ndjson")
    )
    manifest = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert manifest["error"] == []
    # The manifest follows the request's order.
    assert [o["type"] for o in manifest["output"]] == ["Encounter", "Practitioner"]
    e1 = read(importer, "Encounter", "e1")
    assert e1["participant"][0]["individual"]["reference"] == "Practitioner/p77"


def test_a_file_with_invalid_lines_completes_and_its_error_file_names_them(
    importer, database, folder, import_settings
):
    path, url = folder
    (path / "Patient.ndjson").write_bytes(
        ndjson(
            patient(id="ok"),
            "{broken",
            patient(id="bad", birthDate="yesterday"),
            {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"}},
        )
    )
    body = parameters(("Patient", f"{url}/Patient.ndjson"))
    manifest = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert manifest["output"] == [
        {"type": "Patient", "inputUrl": f"{url}/Patient.ndjson", "count": 1}
    ]
    (error,) = manifest["error"]
    assert error["inputUrl"] == f"{url}/Patient.ndjson" and error["count"] == 3
    lines = error_lines(importer, error)
    assert lines[0].startswith(f"Line 2 of {url}/Patient.ndjson: not valid JSON")
    assert lines[1].startswith(f"Line 3 of {url}/Patient.ndjson: ") and "birthDate" in lines[1]
    assert lines[2] == (
        f"Line 4 of {url}/Patient.ndjson: resourceType `Observation` in an input of type Patient"
    )
    assert read(importer, "Patient", "ok")
    assert importer.get(f"{BASE}/Patient/bad").status_code == 404
    assert importer.get(f"{BASE}/Observation/o1").status_code == 404


def test_an_input_that_cannot_be_fetched_is_an_error_and_the_others_load(
    importer, database, folder, import_settings
):
    path, url = folder
    (path / "Patient.ndjson").write_bytes(ndjson(patient(id="p1")))
    body = parameters(
        ("Patient", f"{url}/no-such-file.ndjson"), ("Patient", f"{url}/Patient.ndjson")
    )
    manifest = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert [o["count"] for o in manifest["output"]] == [0, 1]
    (error,) = manifest["error"]
    assert error["inputUrl"] == f"{url}/no-such-file.ndjson"
    (diagnostics,) = error_lines(importer, error)
    assert diagnostics == f"GET {url}/no-such-file.ndjson answered 404 File not found."
    assert read(importer, "Patient", "p1")


def test_redirects_are_followed_only_to_allowed_origins(
    importer, database, served, folder, import_settings
):
    path, url = folder
    (path / "Patient.ndjson").write_bytes(ndjson(patient(id="p1")))
    inside = f"{served[1]}/redirect?to={url}/Patient.ndjson"
    outside = f"{served[1]}/redirect?to=http://127.0.0.2:9/Patient.ndjson"
    body = parameters(("Patient", inside), ("Patient", outside))
    manifest = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert [o["count"] for o in manifest["output"]] == [1, 0]
    (error,) = manifest["error"]
    assert error["inputUrl"] == outside
    (diagnostics,) = error_lines(importer, error)
    assert "redirects elsewhere" in diagnostics
    assert "FHIRSERVER_IMPORT_ALLOWED_ORIGINS" in diagnostics
    assert read(importer, "Patient", "p1")


def test_a_file_over_the_import_limit_loads_nothing(importer, database, folder, import_settings):
    path, url = folder
    (path / "Patient.ndjson").write_bytes(ndjson(*(patient(id=f"p{i}") for i in range(20))))
    body = parameters(("Patient", f"{url}/Patient.ndjson"))
    small = replace(import_settings, import_max_bytes=200)
    manifest = manifest_of(importer, database, kick_off(importer, body), small)
    assert manifest["output"][0]["count"] == 0
    (diagnostics,) = error_lines(importer, manifest["error"][0])
    assert "larger than" in diagnostics and "FHIRSERVER_IMPORT_MAX_BYTES" in diagnostics
    assert total(importer, "Patient") == 0


def test_a_worker_whose_settings_allow_no_origin_fetches_nothing(importer, database, folder):
    path, url = folder
    (path / "Patient.ndjson").write_bytes(ndjson(patient(id="p1")))
    body = parameters(("Patient", f"{url}/Patient.ndjson"))
    # The kick-off was allowed by its server; this worker's settings allow nothing.
    manifest = manifest_of(importer, database, kick_off(importer, body))
    (diagnostics,) = error_lines(importer, manifest["error"][0])
    assert "FHIRSERVER_IMPORT_ALLOWED_ORIGINS" in diagnostics
    assert total(importer, "Patient") == 0


# -- export, then import into an empty database ------------------------------------


def test_an_export_imported_into_an_empty_database_gives_the_same_resources(
    client, importer, database, folder, import_settings
):
    subset = (*BULK_ORDER, "Patient", "AllergyIntolerance", "Device", "Immunization")
    content = b"".join((BULK / f"{t}.000.ndjson").read_bytes() for t in subset)
    loaded = upload(client, content)
    assert loaded.status_code == 200
    assert "0 rejected" in loaded.get_json()["issue"][0]["diagnostics"]

    def export_everything() -> tuple[list[tuple[str, str, bytes]], dict]:
        response = client.get(f"{BASE}/$export", headers=ASYNC)
        manifest = manifest_of(client, database, response)
        files = []
        for item in manifest["output"]:
            data = client.get(local(item["url"]), headers={"Accept": NDJSON}).get_data()
            files.append((item["type"], item["url"].rsplit("/", 1)[1], data))
        resources = {
            (t, r["id"]): without_server_meta(r)
            for t, _, data in files
            for r in map(orjson.loads, data.splitlines())
        }
        return files, resources

    files, before = export_everything()
    assert Counter(t for t, _ in before) == {
        t: len(lines_of(BULK / f"{t}.000.ndjson")) for t in subset
    }

    path, url = folder
    for _, name, data in files:
        (path / name).write_bytes(data)
    with database.engine.begin() as conn:  # as the `database` fixture empties it
        for table in reversed(metadata.sorted_tables):
            conn.execute(text(f"DELETE FROM {table.name}"))
    assert total(client, "Patient") == 0

    body = parameters(*((t, f"{url}/{name}") for t, name, _ in files))
    manifest = manifest_of(importer, database, kick_off(importer, body), import_settings)
    assert manifest["error"] == []
    assert manifest["extension"]["created"] == len(before)

    _, after = export_everything()
    assert after.keys() == before.keys()
    for key, resource in before.items():
        assert after[key] == resource, key


# -- bad kick-offs -----------------------------------------------------------------


def test_import_by_url_is_400_when_the_server_allows_no_origin(client, database, served):
    body = parameters(("Patient", f"{served[1]}/bulk/Patient.000.ndjson"))
    response = kick_off(client, body)
    assert response.status_code == 400
    assert "FHIRSERVER_IMPORT_ALLOWED_ORIGINS" in outcome_text(response)
    assert worker.run_queued(database) == 0


@pytest.mark.parametrize(
    "url, says",
    [
        ("http://example.org/Patient.ndjson", "FHIRSERVER_IMPORT_ALLOWED_ORIGINS"),
        ("https://127.0.0.1/Patient.ndjson", "FHIRSERVER_IMPORT_ALLOWED_ORIGINS"),
        ("file:///etc/passwd", "http or https"),
        ("ftp://127.0.0.1/Patient.ndjson", "http or https"),
        ("Patient.ndjson", "http or https"),
    ],
)
def test_urls_of_other_origins_and_schemes_are_400(importer, database, served, url, says):
    response = kick_off(importer, parameters(("Patient", url)))
    assert response.status_code == 400
    assert says in outcome_text(response)
    assert worker.run_queued(database) == 0


def test_a_url_kick_off_without_prefer_respond_async_is_400(importer, database, served):
    body = parameters(("Patient", f"{served[1]}/bulk/Patient.000.ndjson"))
    response = kick_off(importer, body, headers={"Accept": FHIR_JSON})
    assert response.status_code == 400
    assert "respond-async" in outcome_text(response)
    assert worker.run_queued(database) == 0


def _without(body: dict, name: str) -> dict:
    return {**body, "parameter": [p for p in body["parameter"] if p["name"] != name]}


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda b: _without(b, "input"), "input"),
        (lambda b: _without(b, "inputFormat"), "inputFormat"),
        (lambda b: _without(b, "inputSource"), "inputSource"),
        (lambda b: parameters(("Unicorn", b["url"])), "Unicorn"),
        (lambda b: parameters(("Patient", b["url"]), inputFormat="text/csv"), "text/csv"),
        (lambda b: parameters(("Patient", b["url"]), mode="transaction"), "transaction"),
        (lambda b: parameters(("Patient", b["url"]), storageDetail="aws-s3"), "aws-s3"),
        (lambda b: parameters(("Patient", b["url"]), since="2024"), "since"),
        (
            lambda b: {
                "resourceType": "Parameters",
                "parameter": [
                    *_without(b, "input")["parameter"],
                    {"name": "input", "part": [{"name": "type", "valueCode": "Patient"}]},
                ],
            },
            "url",
        ),
        (lambda b: patient(), "Parameters"),
    ],
)
def test_bad_kick_off_parameters_are_400_and_queue_nothing(
    importer, database, served, change, says
):
    url = f"{served[1]}/bulk/Patient.000.ndjson"
    body = parameters(("Patient", url))
    body["url"] = url
    bad = change(body)
    bad.pop("url", None)
    response = kick_off(importer, bad)
    assert response.status_code == 400, bad
    assert says in outcome_text(response)
    assert worker.run_queued(database) == 0


# -- status, cancel ----------------------------------------------------------------


def test_unknown_import_jobs_are_404(client, database):
    assert client.get(f"{BASE}/_bulk/import/no-such-job").status_code == 404
    assert client.delete(f"{BASE}/_bulk/import/no-such-job").status_code == 404
    # An import job is no export job, and the other way round.
    import_status = accepted(upload(client, ndjson(patient(id="p1")), {"Prefer": "respond-async"}))
    job_id = import_status.rsplit("/", 1)[1]
    assert client.get(f"{BASE}/_bulk/export/{job_id}").status_code == 404
    assert client.delete(f"{BASE}/_bulk/export/{job_id}").status_code == 404
    export_status = accepted(client.get(f"{BASE}/$export?_type=Patient", headers=ASYNC))
    export_id = export_status.rsplit("/", 1)[1]
    assert client.get(f"{BASE}/_bulk/import/{export_id}").status_code == 404
    assert client.delete(f"{BASE}/_bulk/import/{export_id}").status_code == 404
    assert client.get(import_status).status_code == 202
    assert client.get(f"{BASE}/_bulk/files/{job_id}/input-1-errors.ndjson").status_code == 404


def test_cancel_of_a_queued_import_is_202_and_later_polls_are_404(client, database):
    status = accepted(upload(client, ndjson(patient(id="p1")), {"Prefer": "respond-async"}))
    cancelled = client.delete(status)
    assert cancelled.status_code == 202
    assert "cancelled" in outcome_text(cancelled)
    assert client.get(status).status_code == 404
    assert client.delete(status).status_code == 404
    assert worker.run_queued(database) == 0
    assert client.get(f"{BASE}/Patient/p1").status_code == 404


def test_cancel_of_a_completed_import_deletes_its_error_files(client, database):
    response = upload(client, ndjson("{broken"), {"Prefer": "respond-async"})
    status = accepted(response)
    worker.run_queued(database)
    error_url = local(client.get(status).get_json()["error"][0]["url"])
    assert client.get(error_url).status_code == 200
    assert client.delete(status).status_code == 202
    assert client.get(status).status_code == 404
    assert client.get(error_url).status_code == 404


def test_a_running_import_that_is_cancelled_stops_and_stores_nothing_more(client, database):
    status = accepted(upload(client, ndjson(patient(id="p1"), "{x"), {"Prefer": "respond-async"}))
    job = jobs.claim(database, (import_.KIND,))
    assert job is not None
    running = client.get(status)
    assert running.status_code == 202 and running.headers["X-Progress"]
    assert client.delete(status).status_code == 202
    worker.run_job(database, job, import_.Importer())
    assert client.get(status).status_code == 404
    with database.transaction(write=False) as conn:
        assert jobs.find(conn, job.id).status == jobs.CANCELLED
        assert jobs.outputs(conn, job.id) == []
        assert jobs.inputs(conn, job.id) == []


def test_an_import_whose_worker_stopped_reporting_is_run_again_with_the_same_result(
    client, database
):
    content = ndjson(patient(id="p1"), patient(id="p2"), "{x")
    status = accepted(upload(client, content, {"Prefer": "respond-async"}))
    abandoned = jobs.claim(database, (import_.KIND,))
    assert abandoned is not None
    # The first worker got as far as its input's results, then its process died.
    import_.Importer()(database, abandoned)
    later = abandoned.started_at + jobs.STALE_AFTER + timedelta(seconds=1)
    retried = jobs.claim(database, (import_.KIND,), now=later)
    assert retried is not None and retried.id == abandoned.id
    with pytest.raises(jobs.LostJob):
        jobs.report_progress(database, abandoned.lease, "still here")
    worker.run_job(database, retried, import_.Importer())
    manifest = client.get(status).get_json()
    # Imported again: what the first attempt created is now already present.
    assert manifest["output"] == [{"type": "Resource", "count": 2}]
    assert manifest["extension"] == {"read": 3, "created": 0, "alreadyPresent": 2, "rejected": 1}
    assert [e["count"] for e in manifest["error"]] == [1]
    # The upload is dropped once the job has ended.
    with database.transaction(write=False) as conn:
        assert jobs.input_content(conn, retried.id, 1) is None


# -- conformance -------------------------------------------------------------------


def test_capability_statement_lists_import(client):
    rest = client.get(f"{BASE}/metadata").get_json()["rest"][0]
    assert {"name": "import", "definition": "urn:fhirserver:OperationDefinition:import"} in rest[
        "operation"
    ]
