"""Synthea ingest through transaction Bundles over HTTP (used by bench/load_benchmark.py).

Starts ``fhirserver serve --workers 2`` on a fresh PostgreSQL database, posts
Synthea's shared hospital and practitioner Bundles (their conditional creates
make them idempotent), then ``copies`` copies of the 10 patient Bundles with
fresh ``urn:uuid:`` fullUrls per copy, from ``clients`` threads, each Bundle
one ``POST [base]`` transaction: the path an EHR takes. Reports resources/s
over the wall time of the patient Bundles and the server's CPU per resource.
"""

from __future__ import annotations

import http.client
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import rest_benchmark as rest

BUNDLES = rest.FHIR_DATA / "synthea" / "bundles"


def _shared_bundles() -> list[bytes]:
    return [
        p.read_bytes()
        for p in sorted(BUNDLES.glob("*.json"))
        if p.name.startswith(("hospital", "practitioner"))
    ]


def patient_bundles(copies: int) -> list[tuple[bytes, int]]:
    """(Bundle bytes, entry count) for every copy of every patient Bundle."""
    out = []
    for copy in range(copies):
        for path in sorted(BUNDLES.glob("*.json")):
            if path.name.startswith(("hospital", "practitioner")):
                continue
            text = path.read_text()
            bundle = orjson.loads(text)
            for entry in bundle["entry"]:
                old = entry["fullUrl"]
                new = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'tx{copy}:{old}')}"
                text = text.replace(f'"{old}"', f'"{new}"')
            out.append((text.encode(), len(bundle["entry"])))
    return out


def _post(port: int, body: bytes) -> None:
    conn = http.client.HTTPConnection(rest.HOST, port, timeout=300)
    conn.request(
        "POST",
        rest.BASE_PATH,
        body=body,
        headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
    )
    response = conn.getresponse()
    answer = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"transaction answered {response.status}: {answer[:400]!r}")


def run_transactions(admin: str, copies: int, clients: int) -> dict:
    name = f"fhirserver_tx_bench_{uuid.uuid4().hex[:8]}"
    url = rest.with_database(rest.pg_url(admin), name)
    rest.create_database(rest.pg_url(admin), name)
    log = Path(tempfile.gettempdir()) / f"{name}.log"
    server = None
    try:
        port = rest.free_port()
        server = rest.start_server(url, port, log, None)
        rest.wait_until_ready(server, port, log, 120)
        for body in _shared_bundles():
            _post(port, body)
        work = patient_bundles(copies)
        total = sum(count for _, count in work)
        pending = list(work)
        lock = threading.Lock()
        errors: list[Exception] = []

        def client() -> None:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    body, _ = pending.pop()
                try:
                    _post(port, body)
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

        before = rest.cpu_snapshot(server.pid, [])
        started = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        cpu = rest.cpu_delta(before, rest.cpu_snapshot(server.pid, []))
        if errors:
            raise errors[0]
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM resource").fetchone()[0]
        return {
            "bundles": len(work),
            "resources": total,
            "stored": stored,
            "clients": clients,
            "seconds": seconds,
            "resources_per_s": total / seconds,
            "cpu": cpu,
        }
    finally:
        if server is not None:
            rest.stop_server(server)
        rest.drop_database(rest.pg_url(admin), name)
