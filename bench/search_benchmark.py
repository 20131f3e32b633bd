#!/usr/bin/env python3
"""Search benchmark on PostgreSQL: searches/s for the common query shapes, and their EXPLAIN plans (issue 3).

    python bench/search_benchmark.py [--database-server URL] [--copies N] [--seconds S]

1. Creates a fresh database on ``--database-server`` (default
   postgresql://postgres@127.0.0.1:5432/postgres), migrates it, and loads the
   10 Synthea patient Bundles of shared/fhir-data ``--copies`` times (each copy
   with fresh ids, ``urn:uuid:`` references rewritten as a transaction would),
   through the server's own write path (validation + index extraction).
2. Runs each query shape through the WSGI application (in-process, one thread)
   for ``--seconds`` and reports searches/s, and runs the same query's SQL as
   ``EXPLAIN`` and reports whether it reaches the index tables and the
   resource table through indexes (no sequential scan).
3. Drops the database.

The figures go to docs/PERFORMANCE.md ("Search (issue 3)").
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from pathlib import Path

import orjson
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fhirserver import create_app  # noqa: E402
from fhirserver.resources.validate import validate_resource  # noqa: E402
from fhirserver.search import plan as planner  # noqa: E402
from fhirserver.search.parse import parse  # noqa: E402
from fhirserver.search.types import SearchContext  # noqa: E402
from fhirserver.settings import Settings  # noqa: E402
from fhirserver.storage.migrate import upgrade  # noqa: E402
from fhirserver.storage.repository import SqlRepository  # noqa: E402
from fhirserver.storage.session import Database  # noqa: E402

BUNDLES = ROOT.parent / "shared" / "fhir-data" / "synthea" / "bundles"


def synthea_resources(copy: int) -> list[dict]:
    """Every resource of the patient Bundles, with ids unique to this copy and references rewritten."""
    out = []
    for path in sorted(BUNDLES.glob("*.json")):
        if path.name.startswith(("hospital", "practitioner")):
            continue
        text = path.read_text()
        bundle = orjson.loads(text)
        for entry in bundle["entry"]:
            old = entry["fullUrl"]
            new_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{copy}:{old}"))
            text = text.replace(f'"{old}"', f'"{entry["resource"]["resourceType"]}/{new_id}"')
        for entry in orjson.loads(text)["entry"]:
            resource = entry["resource"]
            resource["id"] = entry["fullUrl"].split("/", 1)[1]
            out.append(resource)
    return out


def load(database: Database, copies: int) -> int:
    count = 0
    for copy in range(copies):
        resources = synthea_resources(copy)
        for start in range(0, len(resources), 200):
            with database.transaction(write=True) as conn:
                repository = SqlRepository(conn)
                for resource in resources[start : start + 200]:
                    repository.update(validate_resource(resource), resource["id"])
        count += len(resources)
        print(f"  loaded copy {copy + 1}/{copies} ({count} resources)", flush=True)
    return count


def query_shapes(database: Database) -> list[tuple[str, str]]:
    """(label, query) for the common shapes, with values taken from the loaded data."""
    with database.engine.connect() as conn:
        patient = conn.exec_driver_sql(
            "SELECT id, body::text FROM resource WHERE resource_type = 'Patient' ORDER BY pk LIMIT 1"
        ).one()
    body = orjson.loads(patient[1])
    family = body["name"][0]["family"]
    identifier = next(i for i in body["identifier"] if i.get("system") and i.get("value"))
    pid = patient[0]
    return [
        (
            "patient + code + date",
            f"Observation?patient={pid}&code=http://loinc.org|8302-2&date=ge2000",
        ),
        ("code + value", "Observation?code=http://loinc.org|8302-2&value-quantity=gt170"),
        ("identifier", f"Patient?identifier={identifier['system']}|{identifier['value']}"),
        ("name (starts-with)", f"Patient?name={family[:4].lower()}"),
        ("patient, newest first", f"Observation?patient={pid}&_sort=-date&_count=20"),
        ("chain", f"Observation?subject:Patient.family={family}&code=8302-2"),
        ("_has", "Patient?_has:Observation:patient:code=8302-2&_count=20"),
        ("_revinclude", f"Patient?_id={pid}&_revinclude=Encounter:patient"),
        ("_total=accurate", "Observation?code=http://loinc.org|8302-2&_total=accurate&_count=1"),
    ]


def explain(database: Database, query: str, base_url: str) -> str:
    resource_type, _, query_string = query.partition("?")
    params = [tuple(p.split("=", 1)) for p in query_string.split("&")]
    parsed = parse(resource_type, params)
    context = SearchContext(base_url=base_url, dialect="postgresql")
    statement = planner.build(parsed, context, limit=parsed.count + 1).pages[0]
    compiled = statement.compile(
        dialect=database.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    with database.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN " + str(compiled), compiled.params).all()
    return "\n".join(row[0] for row in rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-server", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    server = make_url(args.database_server).set(drivername="postgresql")
    name = f"fhirserver_search_bench_{uuid.uuid4().hex[:8]}"
    admin = server.render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    database = Database(url)
    try:
        upgrade(database.engine)
        print(f"database {name}: loading Synthea x{args.copies} ...", flush=True)
        started = time.perf_counter()
        total = load(database, args.copies)
        print(f"loaded {total} resources in {time.perf_counter() - started:.1f} s")
        with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
            counts = conn.exec_driver_sql(
                "SELECT (SELECT count(*) FROM resource), (SELECT count(*) FROM search_token),"
                " (SELECT count(*) FROM search_reference), (SELECT count(*) FROM search_date)"
            ).one()
        print(
            f"rows: resource {counts[0]}, search_token {counts[1]}, search_reference {counts[2]}, search_date {counts[3]}"
        )

        app = create_app(Settings(database_url=url))
        client = app.test_client()
        base_url = "http://localhost/fhir"
        print(f"\n{'query shape':28} {'searches/s':>10} {'matches':>8}  index use")
        for label, query in query_shapes(database):
            response = client.get(f"/fhir/{query}")
            assert response.status_code == 200, response.get_data(as_text=True)
            matches = sum(
                1 for e in response.get_json().get("entry", []) if e["search"]["mode"] == "match"
            )
            runs, deadline = 0, time.perf_counter() + args.seconds
            began = time.perf_counter()
            while time.perf_counter() < deadline and runs < 100_000:
                client.get(f"/fhir/{query}")
                runs += 1
            rate = runs / (time.perf_counter() - began)
            plan = explain(database, query, base_url)
            seq = sorted(set(re.findall(r"Seq Scan on (\w+)", plan)))
            verdict = "indexes only" if not seq else f"SEQ SCAN on {', '.join(seq)}"
            print(f"{label:28} {rate:10.0f} {matches:8d}  {verdict}")
            print("    " + query)
            print("    " + plan.replace("\n", "\n    "))
        app.extensions["fhirserver"].database.dispose()
    finally:
        database.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
