"""The real thing: `fhirserver serve` as a process, over a socket, with 1 and 2 workers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import orjson
import pytest

from tests.conftest import BACKEND


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(database_url: str, workers: int):
    port = _free_port()
    env = {**os.environ, "FHIRSERVER_DATABASE_URL": database_url}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhirserver",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        attempts = 300  # 0.2 s apart: a minute for the workers to come up
        while True:
            try:
                with urllib.request.urlopen(f"{base}/metadata", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            attempts -= 1
            if process.poll() is not None or attempts == 0:
                output = process.stdout.read().decode() if process.stdout else ""
                pytest.fail(f"fhirserver serve did not come up:\n{output}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def _request(method: str, url: str, body: dict | None = None) -> tuple[int, object, dict]:
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/fhir+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, orjson.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, error.headers, orjson.loads(error.read() or b"{}")


@pytest.fixture
def fresh_database_url(database_url, tmp_path, database):
    """SQLite: a new file (serve must create the schema itself); PostgreSQL: the test database, emptied."""
    if BACKEND == "sqlite":
        return f"sqlite:///{tmp_path / 'served.db'}"
    return database_url


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_crud_over_http(fresh_database_url, workers):
    with running_server(fresh_database_url, workers) as base:
        status, headers, created = _request(
            "POST", f"{base}/Patient", {"resourceType": "Patient", "gender": "female"}
        )
        assert status == 201
        assert headers["Location"].startswith(f"{base}/Patient/")
        status, _, read = _request("GET", f"{base}/Patient/{created['id']}")
        assert status == 200 and read["gender"] == "female"
        status, _, outcome = _request("GET", f"{base}/Patient/missing")
        assert status == 404 and outcome["resourceType"] == "OperationOutcome"
        # Several processes see one another's writes: state lives in the database only.
        ids = set()
        for _ in range(6):
            status, _, body = _request("POST", f"{base}/Patient", {"resourceType": "Patient"})
            ids.add(body["id"])
        for patient_id in ids:
            assert _request("GET", f"{base}/Patient/{patient_id}")[0] == 200
