"""Bulk Data export — http://hl7.org/fhir/uv/bulkdata/export.html

The whole flow as a client sees it: kick-off (202 + Content-Location), status
polls (202 with X-Progress, then the manifest), ndjson files, cancel. The
worker is driven synchronously (``run_queued``), as ``fhirserver worker --once``
does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from urllib.parse import quote

import orjson
import pytest
from click.testing import CliRunner

from fhirserver.bulk import export, jobs, worker
from fhirserver.cli import main as cli
from tests.api import synthea
from tests.api.helpers import BASE, FHIR_JSON, outcome_text, patient, put

ASYNC = {"Prefer": "respond-async", "Accept": FHIR_JSON}
NDJSON = "application/fhir+ndjson"


# -- helpers ---------------------------------------------------------------------


def kick_off(client, path: str = "$export", query: str = "", headers=None, body=None):
    url = f"{BASE}/{path}" + (f"?{query}" if query else "")
    headers = ASYNC if headers is None else headers
    if body is None:
        return client.get(url, headers=headers)
    return client.post(url, data=orjson.dumps(body), headers={**headers, "Content-Type": FHIR_JSON})


def local(url: str) -> str:
    return url.replace("http://localhost", "")


def accepted(response) -> str:
    """The status URL of an accepted kick-off."""
    assert response.status_code == 202, response.get_data(as_text=True)
    return local(response.headers["Content-Location"])


def run_worker(database, **options) -> int:
    runners = {export.KIND: export.Exporter(**options)} if options else None
    return worker.run_queued(database, runners)


def manifest_of(client, database, response, **options) -> dict:
    status = accepted(response)
    assert run_worker(database, **options) == 1
    answer = client.get(status)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.mimetype == "application/json"
    return answer.get_json()


def download_lines(client, manifest: dict) -> list[tuple[str, bytes]]:
    """(type, line) of every file, in manifest order."""
    out = []
    for item in manifest["output"]:
        response = client.get(local(item["url"]), headers={"Accept": NDJSON})
        assert response.status_code == 200
        assert response.mimetype == NDJSON
        lines = response.get_data().splitlines()
        assert len(lines) == item["count"]
        out += [(item["type"], line) for line in lines]
    return out


def download(client, manifest: dict) -> dict[str, list[dict]]:
    """type -> the resources of its files, in manifest order."""
    out: dict[str, list[dict]] = {}
    for resource_type, line in download_lines(client, manifest):
        out.setdefault(resource_type, []).append(orjson.loads(line))
    return out


def ids(exported: dict[str, list[dict]]) -> dict[str, set[str]]:
    return {t: {r["id"] for r in resources} for t, resources in exported.items()}


def observation(id: str, subject: str | None, code: str = "8480-6") -> dict:
    resource = {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
    }
    if subject:
        resource["subject"] = {"reference": subject}
    return resource


def group(id: str, *members: str, inactive: tuple[str, ...] = ()) -> dict:
    resource = {"resourceType": "Group", "id": id, "type": "person", "actual": True}
    entries = [{"entity": {"reference": m}} for m in members]
    entries += [{"entity": {"reference": m}, "inactive": True} for m in inactive]
    if entries:
        resource["member"] = entries
    return resource


def last_updated(client, reference: str) -> datetime:
    text = client.get(f"{BASE}/{reference}").get_json()["meta"]["lastUpdated"]
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def two_patients(client):
    """p1 with two Observations, p2 with one, an Observation of nobody, an Organization."""
    put(client, patient("One", id="p1"))
    put(client, patient("Two", id="p2"))
    put(client, observation("o1", "Patient/p1"))
    put(client, observation("o2", "Patient/p1", code="29463-7"))
    put(client, observation("o3", "Patient/p2"))
    put(client, observation("o-nobody", None))
    put(client, {"resourceType": "Organization", "id": "org", "name": "Clinic"})


# -- the flow ----------------------------------------------------------------------


def test_system_export_runs_through_kick_off_status_manifest_and_files(
    client, database, two_patients
):
    response = kick_off(client)
    status = accepted(response)
    assert status.startswith(f"{BASE}/_bulk/export/")
    assert response.get_json()["resourceType"] == "OperationOutcome"

    queued = client.get(status)
    assert queued.status_code == 202
    assert queued.headers["X-Progress"]
    assert queued.headers["Retry-After"]

    assert run_worker(database) == 1
    answer = client.get(status)
    assert answer.status_code == 200
    manifest = answer.get_json()
    assert manifest["request"] == "http://localhost/fhir/$export"
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == []
    assert datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
    assert [o["type"] for o in manifest["output"]] == ["Observation", "Organization", "Patient"]
    assert ids(download(client, manifest)) == {
        "Observation": {"o1", "o2", "o3", "o-nobody"},
        "Organization": {"org"},
        "Patient": {"p1", "p2"},
    }
    # Polling again gives the same manifest; the worker has nothing left to do.
    assert client.get(status).get_json() == manifest
    assert run_worker(database) == 0


def test_post_kick_off_takes_a_parameters_resource(client, database, two_patients):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "_type", "valueString": "Patient"},
            {"name": "_type", "valueString": "Organization"},
        ],
    }
    manifest = manifest_of(client, database, kick_off(client, body=body))
    assert manifest["request"] == "http://localhost/fhir/$export"
    assert [o["type"] for o in manifest["output"]] == ["Patient", "Organization"]


def test_every_ndjson_output_format_name_is_accepted(client, database, two_patients):
    for name in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        accepted(kick_off(client, query=f"_outputFormat={quote(name)}&_type=Patient"))
    assert run_worker(database) == 3


def test_type_limits_the_export_to_those_types_in_that_order(client, database, two_patients):
    manifest = manifest_of(client, database, kick_off(client, query="_type=Patient,Organization"))
    assert [o["type"] for o in manifest["output"]] == ["Patient", "Organization"]
    assert manifest["request"] == "http://localhost/fhir/$export?_type=Patient%2COrganization"
    assert ids(download(client, manifest)) == {"Patient": {"p1", "p2"}, "Organization": {"org"}}


def test_files_are_split_above_the_line_limit(client, database):
    for i in range(5):
        put(client, patient(id=f"p{i}"))
    manifest = manifest_of(client, database, kick_off(client, query="_type=Patient"), max_lines=2)
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [
        ("Patient", 2),
        ("Patient", 2),
        ("Patient", 1),
    ]
    assert len({o["url"] for o in manifest["output"]}) == 3
    exported = download(client, manifest)["Patient"]
    assert sorted(r["id"] for r in exported) == [f"p{i}" for i in range(5)]


def test_batches_smaller_than_the_data_still_export_everything_once(client, database):
    for i in range(7):
        put(client, patient(id=f"p{i}"))
    manifest = manifest_of(client, database, kick_off(client, query="_type=Patient"), batch_size=3)
    exported = download(client, manifest)["Patient"]
    assert sorted(r["id"] for r in exported) == [f"p{i}" for i in range(7)]


def test_since_keeps_only_resources_changed_after_it(client, database):
    put(client, patient("Old", id="old"))
    put(client, patient("New", id="new"))
    since = last_updated(client, "Patient/old")
    assert last_updated(client, "Patient/new") > since, "the two writes fell into one millisecond"
    query = f"_since={quote(since.isoformat())}&_type=Patient"
    manifest = manifest_of(client, database, kick_off(client, query=query))
    assert ids(download(client, manifest)) == {"Patient": {"new"}}


def test_since_accepts_a_zone_offset_whose_plus_arrived_as_a_space(client, database):
    put(client, patient(id="p1"))
    # An unencoded `+` in a query string is a space; the server reads it back as `+`.
    response = kick_off(client, query="_since=2000-01-01T00:00:00+01:00&_type=Patient")
    manifest = manifest_of(client, database, response)
    assert ids(download(client, manifest)) == {"Patient": {"p1"}}


def test_type_filter_filters_its_type_and_leaves_the_others_whole(client, database, two_patients):
    query = "_type=Observation,Patient&_typeFilter=" + quote("Observation?code=29463-7")
    manifest = manifest_of(client, database, kick_off(client, query=query))
    assert ids(download(client, manifest)) == {"Observation": {"o2"}, "Patient": {"p1", "p2"}}


def test_several_type_filters_of_one_type_are_or_ed(client, database, two_patients):
    filters = ["Observation?subject=Patient/p2", "Observation?code=29463-7"]
    query = "_type=Observation&" + "&".join(f"_typeFilter={quote(f)}" for f in filters)
    manifest = manifest_of(client, database, kick_off(client, query=query))
    assert ids(download(client, manifest)) == {"Observation": {"o2", "o3"}}
    # The same two queries in one comma-separated value; a comma inside a query ORs values.
    query = "_type=Observation&_typeFilter=" + quote(",".join(filters))
    manifest = manifest_of(client, database, kick_off(client, query=query))
    assert ids(download(client, manifest)) == {"Observation": {"o2", "o3"}}
    query = "_type=Observation&_typeFilter=" + quote("Observation?code=29463-7,8480-6&subject=p2")
    manifest = manifest_of(client, database, kick_off(client, query=query))
    assert ids(download(client, manifest)) == {"Observation": {"o3"}}


# -- Patient and Group level -------------------------------------------------------


def test_patient_export_holds_only_the_patients_compartments(client, database, two_patients):
    manifest = manifest_of(client, database, kick_off(client, "Patient/$export"))
    assert manifest["request"] == "http://localhost/fhir/Patient/$export"
    assert ids(download(client, manifest)) == {
        "Patient": {"p1", "p2"},
        "Observation": {"o1", "o2", "o3"},
    }


def test_patient_export_with_type_and_type_filter(client, database, two_patients):
    query = "_type=Observation,Organization&_typeFilter=" + quote("Observation?code=8480-6")
    manifest = manifest_of(client, database, kick_off(client, "Patient/$export", query))
    # Organization is never in a Patient compartment.
    assert ids(download(client, manifest)) == {"Observation": {"o1", "o3"}}


def test_group_export_holds_only_the_active_patient_members_data(client, database, two_patients):
    put(client, patient("Three", id="p3"))
    put(client, observation("o4", "Patient/p3"))
    put(
        client,
        group("g", "Patient/p1", "http://localhost/fhir/Patient/p3", inactive=("Patient/p2",)),
    )
    manifest = manifest_of(client, database, kick_off(client, "Group/g/$export"))
    assert manifest["request"] == "http://localhost/fhir/Group/g/$export"
    assert ids(download(client, manifest)) == {
        "Patient": {"p1", "p3"},
        "Observation": {"o1", "o2", "o4"},
        # A Group is in its members' compartments (Group.member, R4 CompartmentDefinition).
        "Group": {"g"},
    }


def test_group_export_with_since_and_type(client, database, two_patients):
    put(client, group("g", "Patient/p1", "Patient/p2"))
    since = last_updated(client, "Observation/o2")
    put(client, observation("o5", "Patient/p2"))
    assert last_updated(client, "Observation/o5") > since, "two writes in one millisecond"
    query = f"_type=Observation&_since={quote(since.isoformat())}"
    manifest = manifest_of(client, database, kick_off(client, "Group/g/$export", query))
    assert ids(download(client, manifest)) == {"Observation": {"o3", "o5"}}


def test_group_without_patient_members_exports_nothing(client, database, two_patients):
    put(client, group("empty"))
    manifest = manifest_of(client, database, kick_off(client, "Group/empty/$export"))
    assert manifest["output"] == []


def test_export_of_a_loaded_synthea_patient_returns_exactly_the_stored_resources(client, database):
    path = min(synthea.patient_bundles(), key=lambda p: p.stat().st_size)
    loaded = synthea.load(client, path)
    manifest = manifest_of(client, database, kick_off(client))
    lines = download_lines(client, manifest)
    exported = {(t, orjson.loads(line)["id"]): line for t, line in lines}
    assert len(exported) == len(lines) == len(loaded)
    assert set(exported) == {(r["resourceType"], r["id"]) for r in loaded}
    for (resource_type, id), line in exported.items():
        # Each line is the stored resource, byte for byte as a read returns it.
        assert line == client.get(f"{BASE}/{resource_type}/{id}").get_data()

    # The same patient through Patient/$export and a Group of it: every resource
    # referring to the patient is there (each is in its compartment).
    patient_id = next(r["id"] for r in loaded if r["resourceType"] == "Patient")
    put(client, group("synthea", f"Patient/{patient_id}"))
    for path in ("Patient/$export", "Group/synthea/$export"):
        exported_ids = ids(download(client, manifest_of(client, database, kick_off(client, path))))
        for resource in loaded:
            if f'"Patient/{patient_id}"' in orjson.dumps(resource).decode():
                assert resource["id"] in exported_ids.get(resource["resourceType"], set()), (
                    path,
                    resource["resourceType"],
                )


# -- the data as of the transaction time -------------------------------------------


def _claim_as_of(database, moment: datetime) -> jobs.Job:
    job = jobs.claim(database, (export.KIND,), now=moment)
    assert job is not None and job.transaction_time == moment
    return job


def test_a_resource_changed_during_the_export_is_exported_as_of_the_transaction_time(
    client, database
):
    put(client, patient("Before", id="p1"))
    status = accepted(kick_off(client, query="_type=Patient"))
    job = _claim_as_of(database, last_updated(client, "Patient/p1"))
    put(client, patient("After", id="p1"))  # a later version, after the transaction time
    worker.run_job(database, job, export.Exporter())
    manifest = client.get(status).get_json()
    (exported,) = download(client, manifest)["Patient"]
    assert exported["name"][0]["family"] == "Before"
    assert exported["meta"]["versionId"] == "1"


def test_a_resource_deleted_during_the_export_is_still_exported(client, database):
    put(client, patient("Gone", id="p1"))
    status = accepted(kick_off(client, query="_type=Patient"))
    job = _claim_as_of(database, last_updated(client, "Patient/p1"))
    assert client.delete(f"{BASE}/Patient/p1").status_code in (200, 204)
    worker.run_job(database, job, export.Exporter())
    assert ids(download(client, client.get(status).get_json())) == {"Patient": {"p1"}}


def test_a_resource_created_after_the_transaction_time_is_left_out(client, database):
    put(client, patient("Later", id="p1"))
    status = accepted(kick_off(client, query="_type=Patient"))
    job = _claim_as_of(database, last_updated(client, "Patient/p1") - timedelta(milliseconds=1))
    worker.run_job(database, job, export.Exporter())
    assert client.get(status).get_json()["output"] == []


# -- cancel ------------------------------------------------------------------------


def test_cancel_of_a_queued_export_is_202_and_later_polls_are_404(client, database, two_patients):
    status = accepted(kick_off(client))
    cancelled = client.delete(status)
    assert cancelled.status_code == 202
    assert client.get(status).status_code == 404
    assert client.delete(status).status_code == 404
    assert run_worker(database) == 0


def test_cancel_of_a_completed_export_deletes_its_files(client, database, two_patients):
    status = accepted(kick_off(client, query="_type=Patient"))
    run_worker(database)
    manifest = client.get(status).get_json()
    file_url = local(manifest["output"][0]["url"])
    assert client.get(file_url).status_code == 200
    assert client.delete(status).status_code == 202
    assert client.get(status).status_code == 404
    assert client.get(file_url).status_code == 404


def test_a_running_export_that_is_cancelled_stops_and_writes_nothing(
    client, database, two_patients
):
    status = accepted(kick_off(client))
    job = jobs.claim(database, (export.KIND,))
    assert job is not None
    running = client.get(status)
    assert running.status_code == 202 and running.headers["X-Progress"]
    assert client.delete(status).status_code == 202
    worker.run_job(database, job, export.Exporter())
    assert client.get(status).status_code == 404
    with database.transaction(write=False) as conn:
        assert jobs.find(conn, job.id).status == jobs.CANCELLED
        assert jobs.outputs(conn, job.id) == []


# -- failures and bad requests -----------------------------------------------------


def test_kick_off_without_prefer_respond_async_is_400(client, two_patients):
    response = kick_off(client, headers={"Accept": FHIR_JSON})
    assert response.status_code == 400
    assert "respond-async" in outcome_text(response)


@pytest.mark.parametrize(
    "query",
    [
        "_type=Patient,Unicorn",
        "_since=yesterday",
        "_since=2024-05-01",  # an instant needs a time and a zone
        "_since=2024-05-01T10:00:00",
        "_since=2024-13-01T10:00:00Z",
        "_outputFormat=application/fhir%2Bjson",
        "_typeFilter=" + quote("Observation?unknown-parameter=1"),
        "_typeFilter=" + quote("Unicorn?name=x"),
        "_typeFilter=Observation",
        "_typeFilter=" + quote("Observation?date=not-a-date"),
        "_typeFilter=" + quote("Observation?_include=Observation:subject"),
        "_elements=id",
        "includeAssociatedData=LatestProvenanceResources",
    ],
)
def test_bad_kick_off_parameters_are_400_and_queue_nothing(client, database, query):
    response = kick_off(client, query=query)
    assert response.status_code == 400, query
    assert outcome_text(response)
    assert run_worker(database) == 0


def test_unsupported_parameters_are_ignored_under_lenient_handling(client, database, two_patients):
    headers = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    query = "_elements=id&_type=Patient&_typeFilter=" + quote("Patient?unknown-parameter=1")
    manifest = manifest_of(client, database, kick_off(client, query=query, headers=headers))
    assert ids(download(client, manifest)) == {"Patient": {"p1", "p2"}}


def test_group_export_of_an_unknown_group_is_404(client):
    assert kick_off(client, "Group/nobody/$export").status_code == 404


def test_group_export_of_a_deleted_group_is_410(client):
    put(client, group("g"))
    client.delete(f"{BASE}/Group/g")
    assert kick_off(client, "Group/g/$export").status_code == 410


def test_export_at_a_level_or_type_it_does_not_run_at_is_400(client):
    put(client, patient(id="p1"))
    assert kick_off(client, "Observation/$export").status_code == 400
    assert kick_off(client, "Patient/p1/$export").status_code == 400
    assert kick_off(client, "Group/$export").status_code == 400


def test_unknown_jobs_and_files_are_404(client, database, two_patients):
    assert client.get(f"{BASE}/_bulk/export/no-such-job").status_code == 404
    assert client.delete(f"{BASE}/_bulk/export/no-such-job").status_code == 404
    assert client.get(f"{BASE}/_bulk/files/no-such-job/Patient-1.ndjson").status_code == 404
    status = accepted(kick_off(client, query="_type=Patient"))
    job_id = status.rsplit("/", 1)[1]
    # Not yet written.
    assert client.get(f"{BASE}/_bulk/files/{job_id}/Patient-1.ndjson").status_code == 404
    run_worker(database)
    assert client.get(f"{BASE}/_bulk/files/{job_id}/Patient-1.ndjson").status_code == 200
    assert client.get(f"{BASE}/_bulk/files/{job_id}/Patient-2.ndjson").status_code == 404


def test_an_export_whose_group_disappeared_fails_with_an_operation_outcome(
    client, database, two_patients
):
    put(client, group("g", "Patient/p1"))
    status = accepted(kick_off(client, "Group/g/$export"))
    client.delete(f"{BASE}/Group/g")
    assert run_worker(database) == 1
    failed = client.get(status)
    assert failed.status_code == 500
    assert "Group `g`" in outcome_text(failed)
    # A failed job may be deleted like any other.
    assert client.delete(status).status_code == 202
    assert client.get(status).status_code == 404


# -- workers -----------------------------------------------------------------------


def test_a_second_claimant_never_gets_the_job_the_first_is_claiming(client, database):
    first_status = accepted(kick_off(client, query="_type=Patient"))
    second_status = accepted(kick_off(client, query="_type=Organization"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        with database.transaction(write=True) as conn:
            first = jobs.claim_next(conn, (export.KIND,))
            assert first is not None
            # Another connection claims while the first claim is not committed yet.
            other = pool.submit(jobs.claim, database, (export.KIND,))
            if database.dialect == "postgresql":
                # SKIP LOCKED: it does not wait for the first claimant; it takes the next job.
                second = other.result(timeout=30)
        if database.dialect != "postgresql":
            # SQLite: the claims are serialized by the write lock (BEGIN IMMEDIATE).
            second = other.result(timeout=60)
    assert second is not None
    assert {first.id, second.id} == {s.rsplit("/", 1)[1] for s in (first_status, second_status)}
    assert jobs.claim(database, (export.KIND,)) is None


def test_two_workers_running_at_once_run_each_job_once(app, client, database, two_patients):
    statuses = [accepted(kick_off(client, query=f"_type={t}")) for t in ("Patient", "Observation")]
    statuses.append(accepted(kick_off(client, "Patient/$export")))
    with ThreadPoolExecutor(max_workers=2) as pool:
        counts = list(pool.map(lambda _: worker.run_queued(database), range(2)))
    assert sum(counts) == 3
    for status in statuses:
        manifest = client.get(status).get_json()
        # One file per type: a job run twice would have stored its files twice.
        types = [o["type"] for o in manifest["output"]]
        assert len(types) == len(set(types)) and types


def test_a_job_whose_worker_stopped_reporting_is_claimed_again(client, database, two_patients):
    status = accepted(kick_off(client, query="_type=Patient"))
    abandoned = jobs.claim(database, (export.KIND,))
    assert abandoned is not None
    assert jobs.claim(database, (export.KIND,)) is None  # still fresh: nobody else takes it
    later = abandoned.started_at + jobs.STALE_AFTER + timedelta(seconds=1)
    retried = jobs.claim(database, (export.KIND,), now=later)
    assert retried is not None and retried.id == abandoned.id
    assert retried.attempt == abandoned.attempt + 1
    # The first worker has lost the job: it can no longer write into it.
    with pytest.raises(jobs.LostJob):
        jobs.report_progress(database, abandoned.lease, "still here")
    worker.run_job(database, retried, export.Exporter())
    assert ids(download(client, client.get(status).get_json())) == {"Patient": {"p1", "p2"}}


def test_fhirserver_worker_once_runs_the_queue(client, database, settings, two_patients):
    status = accepted(kick_off(client, query="_type=Patient"))
    result = CliRunner().invoke(cli, ["worker", "--once", "--database", settings.database_url])
    assert result.exit_code == 0, result.output
    assert "ran 1 bulk data job" in result.output
    assert client.get(status).status_code == 200


# -- conformance -------------------------------------------------------------------


def test_capability_statement_lists_the_three_export_definitions(client):
    statement = client.get(f"{BASE}/metadata").get_json()
    rest = statement["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    base = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
    assert {"name": "export", "definition": f"{base}/export"} in rest["operation"]
    assert {"name": "export", "definition": f"{base}/patient-export"} in by_type["Patient"][
        "operation"
    ]
    assert {"name": "export", "definition": f"{base}/group-export"} in by_type["Group"]["operation"]
    assert not any(o["name"] == "export" for o in by_type["Observation"].get("operation", []))
