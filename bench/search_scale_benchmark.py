#!/usr/bin/env python3
"""Search at scale (issue 3): Synthea-shaped Observations over Patients on PostgreSQL, over HTTP.

    python bench/search_scale_benchmark.py [--database-server URL]
        [--patients 10000] [--observations 1000000] [--keep]
        [--duration S] [--connections C] [--load-workers N]

What one run does (figures go to docs/PERFORMANCE.md, "Search at scale"):

1. Database ``fhirserver_bench_search_<patients>_<observations>`` on the server
   given by ``--database-server``. With ``--keep`` an existing one that a
   previous run loaded completely is reused (its load figures are read back
   from it) and it is not dropped at the end; without it, it is created fresh
   and dropped at the end.
2. Load: ``--patients`` Patients (generated from the Synthea Patients in
   shared/fhir-data, as bench/rest_benchmark.py does), 200 Practitioners (from
   the Synthea practitioner Bundle) and ``--observations`` Observations, each a
   copy of one of the 1,328 Synthea Observations of shared/fhir-data with a new
   id, a random one of the Patients as subject, a random Practitioner as
   performer, a random effective date 2010-2025 and a jittered value. Every
   resource goes through the server's own write path for bulk loads:
   validation (``validate_resource``), index extraction and
   ``storage/bulk.insert_new`` in transactions of 1,000, from ``--load-workers``
   processes. The load rate is resources/s of wall time, then ``VACUUM ANALYZE``.
3. A plain table ``bench_raw.observation (id, patient, code, body jsonb)`` with
   an index on (patient, code), holding the same Observations: the raw SQL
   equivalent of ``Observation?patient=X&code=Y``, run through psycopg from
   ``--connections`` processes, each its own connection, for ``--duration`` s.
4. ``fhirserver serve --workers 2`` on the database, and for each query shape
   a set of concrete queries (values drawn from the data) run by wrk with
   ``--connections`` connections for ``--duration`` s after a warm-up:
   requests/s, p50, p99. Paging: ``Observation?_sort=-date&_count=50`` page 1
   and page 20 (reached by following ``next``), measured the same way.
5. ``EXPLAIN (ANALYZE, BUFFERS)`` of the SQL each shape compiles to, and
   whether it reaches its tables through indexes only.
6. A table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson
import psycopg

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(BENCH_DIR))

import rest_benchmark as rest  # noqa: E402

from fhirserver.resources.validate import validate_resource  # noqa: E402
from fhirserver.search import plan as planner  # noqa: E402
from fhirserver.search.parse import parse  # noqa: E402
from fhirserver.search.types import SearchContext  # noqa: E402
from fhirserver.storage.bulk import insert_new  # noqa: E402
from fhirserver.storage.migrate import upgrade  # noqa: E402
from fhirserver.storage.session import Database  # noqa: E402

SYNTHEA_BUNDLES = rest.FHIR_DATA / "synthea" / "bundles"
PRACTITIONERS = 200
BATCH = 1000
#: Bumped whenever the generated data changes, so --keep never reuses stale data.
GENERATOR_VERSION = 1
NAMESPACE = uuid.UUID("6f1c2d1e-2f0b-4a43-9a0e-6a1f3c9d7b10")
FIRST_DAY = datetime(2010, 1, 1, tzinfo=UTC)
SPAN_SECONDS = int((datetime(2026, 1, 1, tzinfo=UTC) - FIRST_DAY).total_seconds())


# ------------------------------------------------------------------------ data


def patient_id(i: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"patient-{i}"))


def practitioner_id(i: int) -> str:
    return str(uuid.uuid5(NAMESPACE, f"practitioner-{i}"))


def _bundle_resources(resource_type: str) -> list[dict]:
    found = []
    for path in sorted(SYNTHEA_BUNDLES.glob("*.json")):
        for entry in orjson.loads(path.read_bytes())["entry"]:
            if entry["resource"]["resourceType"] == resource_type:
                found.append(entry["resource"])
    if not found:
        raise SystemExit(f"no {resource_type} in {SYNTHEA_BUNDLES}: is shared/fhir-data there?")
    return found


def observation_templates() -> list[bytes]:
    templates = []
    for observation in _bundle_resources("Observation"):
        observation.pop("encounter", None)
        observation.pop("id", None)
        templates.append(orjson.dumps(observation))
    return templates


def make_observations(start: int, stop: int, patients: int, seed: int, templates) -> list[dict]:
    rng = random.Random(f"{seed}-observations-{start}")
    out = []
    for i in range(start, stop):
        observation = orjson.loads(templates[rng.randrange(len(templates))])
        observation["id"] = str(uuid.uuid5(NAMESPACE, f"observation-{i}"))
        observation["subject"] = {"reference": f"Patient/{patient_id(rng.randrange(patients))}"}
        observation["performer"] = [
            {"reference": f"Practitioner/{practitioner_id(rng.randrange(PRACTITIONERS))}"}
        ]
        moment = FIRST_DAY + timedelta(seconds=rng.randrange(SPAN_SECONDS))
        observation["effectiveDateTime"] = moment.isoformat()
        observation["issued"] = moment.isoformat(timespec="milliseconds")
        quantity = observation.get("valueQuantity")
        if quantity and isinstance(quantity.get("value"), int | float):
            quantity["value"] = round(quantity["value"] * rng.uniform(0.8, 1.2), 1)
        out.append(observation)
    return out


def make_people(patients: int, seed: int) -> list[dict]:
    people = rest.make_patients(patients, seed, rest.load_templates())
    for i, patient in enumerate(people):
        patient["id"] = patient_id(i)
    templates = _bundle_resources("Practitioner")
    for i in range(PRACTITIONERS):
        practitioner = json.loads(json.dumps(templates[i % len(templates)]))
        practitioner["id"] = practitioner_id(i)
        people.append(practitioner)
    return people


# ------------------------------------------------------------------------ load


def _write(database: Database, resources: list[dict]) -> int:
    validated = [validate_resource(r, r["resourceType"]) for r in resources]
    with database.transaction(write=True) as conn:
        return len(insert_new(conn, validated).created)


_WORKER: dict = {}


def _init_worker(url: str, templates: list[bytes]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER["database"] = Database(url, pool_size=1)
    _WORKER["templates"] = templates


def _load_chunk(job: tuple[int, int, int, int]) -> int:
    start, stop, patients, seed = job
    resources = make_observations(start, stop, patients, seed, _WORKER["templates"])
    return _write(_WORKER["database"], resources)


def load(url: str, args) -> dict:
    database = Database(url, pool_size=1)
    upgrade(database.engine)
    started = time.perf_counter()
    people = make_people(args.patients, args.seed)
    for i in range(0, len(people), BATCH):
        _write(database, people[i : i + BATCH])
    database.dispose()
    jobs = [
        (start, min(start + BATCH, args.observations), args.patients, args.seed)
        for start in range(0, args.observations, BATCH)
    ]
    written, last_report = 0, time.perf_counter()
    context = multiprocessing.get_context("fork")
    with context.Pool(args.load_workers, _init_worker, (url, observation_templates())) as pool:
        for count in pool.imap_unordered(_load_chunk, jobs):
            written += count
            if time.perf_counter() - last_report > 15:
                elapsed = time.perf_counter() - started
                print(
                    f"  {written:,} Observations in {elapsed:.0f} s "
                    f"({(written + len(people)) / elapsed:,.0f} resources/s)",
                    flush=True,
                )
                last_report = time.perf_counter()
    seconds = time.perf_counter() - started
    total = len(people) + written
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return {
        "resources": total,
        "seconds": round(seconds, 1),
        "resources_per_s": round(total / seconds),
        "load_workers": args.load_workers,
    }


def database_sizes(url: str) -> dict:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname, n_live_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables"
            " WHERE relname LIKE 'resource%%' OR relname LIKE 'search_%%' ORDER BY relname"
        ).fetchall()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    return {
        "database_bytes": size,
        "tables": {name: {"rows": rows_, "bytes": bytes_} for name, rows_, bytes_ in rows},
    }


def remember_load(url: str, figures: dict) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value jsonb)")
        conn.execute(
            "INSERT INTO bench_meta VALUES ('load', %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (json.dumps({**figures, "generator": GENERATOR_VERSION}),),
        )


def recorded_load(url: str) -> dict | None:
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM bench_meta WHERE key = 'load'").fetchone()
    except psycopg.Error:
        return None
    if row is None or row[0].get("generator") != GENERATOR_VERSION:
        return None
    return row[0]


# ------------------------------------------------------------------------ queries


def query_sets(url: str, args) -> dict[str, list[str]]:
    """Per shape, concrete queries with values drawn from the loaded data."""
    rng = random.Random(args.seed)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT body->'subject'->>'reference', body->'code'->'coding'->0->>'code'"
            " FROM resource TABLESAMPLE SYSTEM (1) WHERE resource_type = 'Observation' LIMIT 500"
        ).fetchall()
        families = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT body->'name'->0->>'family' FROM resource"
                " WHERE resource_type = 'Patient'"
            ).fetchall()
        ]
        codes = [
            r[0]
            for r in conn.execute(
                "SELECT code FROM search_token WHERE resource_type = 'Observation'"
                " AND param = 'code' AND system = 'http://loinc.org' GROUP BY code"
                " ORDER BY count(*) DESC LIMIT 20"
            ).fetchall()
        ]
    pairs = [(ref.split("/", 1)[1], code) for ref, code in rows if ref and code]
    months = [(2010 + m // 12, m % 12 + 1) for m in range(16 * 12)]

    def window() -> str:
        year, month = rng.choice(months)
        after = f"{year + month // 12}-{month % 12 + 1:02d}"
        return f"date=ge{year}-{month:02d}&date=lt{after}"

    n = 200
    return {
        "Observation?patient=X&code=Y": [
            f"Observation?patient={p}&code=http://loinc.org|{c}"
            for p, c in (rng.choice(pairs) for _ in range(n))
        ],
        "Observation?code=Y&date=ge..&date=lt..": [
            f"Observation?code=http://loinc.org|{rng.choice(codes)}&{window()}" for _ in range(n)
        ],
        "Patient?name=...": [f"Patient?name={rng.choice(families)}" for _ in range(n)],
        "Observation?subject:Patient.name=...": [
            f"Observation?subject:Patient.name={rng.choice(families)}" for _ in range(n)
        ],
        "Patient?_has:Observation:patient:code=...": [
            f"Patient?_has:Observation:patient:code={rng.choice(codes)}" for _ in range(n)
        ],
        "Observation?patient=X&_include=Observation:performer": [
            f"Observation?patient={p}&_include=Observation:performer"
            for p, _ in (rng.choice(pairs) for _ in range(n))
        ],
    }


def _get(port: int, path: str) -> dict:
    import http.client

    conn = http.client.HTTPConnection(rest.HOST, port, timeout=120)
    conn.request("GET", f"{rest.BASE_PATH}/{path}", headers={"Accept": "application/fhir+json"})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path} -> {response.status}: {body[:500]!r}")
    return orjson.loads(body)


def paging_queries(port: int) -> dict[str, list[str]]:
    first = "Observation?_sort=-date&_count=50"
    bundle, url = _get(port, first), None
    for _ in range(19):
        url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
        bundle = _get(port, url.split(f"{rest.BASE_PATH}/", 1)[1])
    assert url is not None
    return {
        "Observation?_sort=-date&_count=50 (page 1)": [first],
        "Observation?_sort=-date&_count=50 (page 20)": [url.split(f"{rest.BASE_PATH}/", 1)[1]],
    }


def run_http(port: int, label: str, paths: list[str], args, server_pid: int) -> dict:
    """Latency with one client at a time (``--latency-connections``), then
    throughput with ``--connections`` clients: under load on a small machine
    latency is mostly queueing, which says little about the query."""
    sample = _get(port, paths[0])
    matches = sum(1 for e in sample.get("entry", []) if e["search"]["mode"] == "match")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(paths) + "\n")
        data_file = Path(f.name)
    single = argparse.Namespace(**{**vars(args), "connections": args.latency_connections})
    single.wrk_threads = min(args.wrk_threads, single.connections)
    try:
        if args.warmup:
            rest.run_wrk(args, port, "get", data_file, args.warmup, args.seed + 1, server_pid)
        latency = rest.run_wrk(single, port, "get", data_file, args.duration, args.seed, server_pid)
        load = rest.run_wrk(args, port, "get", data_file, args.duration, args.seed, server_pid)
    finally:
        data_file.unlink()
    result = {
        "sample_query": paths[0],
        "sample_matches_on_page": matches,
        "latency": latency,
        "throughput": load,
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "rps": load["rps"],
    }
    print(
        f"{label:55} {latency['p50_ms']:7.1f} {latency['p99_ms']:7.1f} {latency['rps']:7.1f}"
        f" | {load['rps']:7.1f} {load['p50_ms']:7.1f} {load['p99_ms']:7.1f}"
        f" {latency['errors'] + load['errors']:4d}",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------ raw SQL


def prepare_raw(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'bench_raw'"
            " AND table_name = 'observation'"
        ).fetchone()
        if exists:
            return
        conn.execute("CREATE SCHEMA IF NOT EXISTS bench_raw")
        conn.execute(
            "CREATE TABLE bench_raw.observation (id text PRIMARY KEY, patient text NOT NULL,"
            " code text NOT NULL, body jsonb NOT NULL)"
        )
        conn.execute(
            "INSERT INTO bench_raw.observation SELECT id, split_part(body->'subject'->>'reference', '/', 2),"
            " body->'code'->'coding'->0->>'code', body FROM resource WHERE resource_type = 'Observation'"
        )
        conn.execute("CREATE INDEX ON bench_raw.observation (patient, code)")
        conn.execute("VACUUM ANALYZE bench_raw.observation")


def _raw_worker(url, pairs, seconds, seed, barrier, out) -> None:
    rng = random.Random(seed)
    latencies = []
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        statement = (
            "SELECT body::text FROM bench_raw.observation WHERE patient = %s AND code = %s"
            " ORDER BY id LIMIT 21"
        )
        barrier.wait()
        deadline = time.perf_counter() + seconds
        while (now := time.perf_counter()) < deadline:
            cur.execute(statement, rng.choice(pairs), prepare=True)
            cur.fetchall()
            latencies.append(time.perf_counter() - now)
    out.put(latencies)


def run_raw(url: str, query_paths: list[str], args) -> dict:
    pairs = []
    for path in query_paths:
        params = dict(parse_qsl(urlsplit(path).query))
        pairs.append((params["patient"], params["code"].split("|")[-1]))
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(args.connections + 1)
    out = context.Queue()
    procs = [
        context.Process(
            target=_raw_worker, args=(url, pairs, args.duration, args.seed + k, barrier, out)
        )
        for k in range(args.connections)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    latencies = sorted(x for _ in procs for x in out.get())
    seconds = time.perf_counter() - started
    for p in procs:
        p.join()
    result = {
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "rps": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": rest.percentile(latencies, 99) * 1000,
    }
    print(
        f"raw psycopg, same as Observation?patient=X&code=Y, {args.connections} connection(s):"
        f" {result['rps']:.1f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms",
        flush=True,
    )
    return result


# ------------------------------------------------------------------------ EXPLAIN


def explain(url: str, path: str) -> tuple[str, list[str]]:
    resource_type, _, query_string = path.partition("?")
    query = parse(resource_type, parse_qsl(query_string, keep_blank_values=True))
    context = SearchContext(base_url="http://bench/fhir", dialect="postgresql")
    database = Database(url, pool_size=1)
    try:
        statement = planner.build(query, context, limit=query.count + 1).pages[0]
        compiled = statement.compile(
            dialect=database.engine.dialect, compile_kwargs={"render_postcompile": True}
        )
        with database.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS) " + str(compiled), compiled.params
            ).all()
    finally:
        database.dispose()
    plan = "\n".join(row[0] for row in rows)
    return plan, sorted(set(re.findall(r"Seq Scan on (\w+)", plan)))


# ------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-server", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--observations", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="reuse and keep the loaded database")
    parser.add_argument("--load-workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--latency-connections", type=int, default=1)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=1_000_000)
    parser.add_argument("--wrk", default="wrk")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    admin = rest.pg_url(args.database_server)
    name = f"fhirserver_bench_search_{args.patients}_{args.observations}"
    url = rest.with_database(admin, name)
    results: dict = {
        "benchmark": "search_scale",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": multiprocessing.cpu_count()},
        "patients": args.patients,
        "observations": args.observations,
        "database": name,
    }
    figures = recorded_load(url) if args.keep else None
    if figures is None:
        print(f"database {name}: creating and loading ...", flush=True)
        rest.drop_database(admin, name)
        rest.create_database(admin, name)
        figures = load(url, args)
        remember_load(url, figures)
    else:
        print(f"database {name}: reusing the data a previous run loaded", flush=True)
    results["load"] = figures
    print(
        f"load: {figures['resources']:,} resources in {figures['seconds']:,} s ="
        f" {figures['resources_per_s']:,} resources/s ({figures['load_workers']} load processes)"
    )
    results["sizes"] = database_sizes(url)
    print(f"database size: {results['sizes']['database_bytes'] / 2**30:.2f} GiB")

    server, log_path = None, Path(tempfile.gettempdir()) / f"{name}.server.log"
    try:
        prepare_raw(url)
        port = rest.free_port()
        server = rest.start_server(url, port, log_path, None)
        rest.wait_until_ready(server, port, log_path, 60)
        shapes = {**query_sets(url, args), **paging_queries(port)}
        print(
            f"\n{'':55} {f'{args.latency_connections} connection(s)':>23} |"
            f" {f'{args.connections} connections':>23}\n"
            f"{'query (HTTP, wrk)':55} {'p50 ms':>7} {'p99 ms':>7} {'req/s':>7}"
            f" | {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4}"
        )
        http_results = {
            label: run_http(port, label, paths, args, server.pid) for label, paths in shapes.items()
        }
        results["http"] = http_results
        results["raw"] = run_raw(url, shapes["Observation?patient=X&code=Y"], args)
        single = argparse.Namespace(**{**vars(args), "connections": args.latency_connections})
        results["raw_latency"] = run_raw(url, shapes["Observation?patient=X&code=Y"], single)
        page1 = http_results["Observation?_sort=-date&_count=50 (page 1)"]["p50_ms"]
        page20 = http_results["Observation?_sort=-date&_count=50 (page 20)"]["p50_ms"]
        results["paging_ratio_p50"] = page20 / page1 if page1 else None
        results["server_vs_raw_rps"] = (
            http_results["Observation?patient=X&code=Y"]["rps"] / results["raw"]["rps"]
        )
        print(
            f"\npage 20 / page 1 (p50): {results['paging_ratio_p50']:.2f}  (target <= 2)\n"
            f"server / raw SQL (req/s, patient + code): {results['server_vs_raw_rps']:.3f}"
        )
        print("\nEXPLAIN (ANALYZE, BUFFERS) of each shape's page query:")
        results["explain"] = {}
        for label, paths in shapes.items():
            plan, seq = explain(url, paths[0])
            results["explain"][label] = {"query": paths[0], "seq_scans": seq, "plan": plan}
            verdict = "indexes only" if not seq else f"SEQ SCAN on {', '.join(seq)}"
            print(f"\n## {label}: {verdict}\n   {paths[0]}\n   " + plan.replace("\n", "\n   "))
    finally:
        if server is not None:
            rest.stop_server(server)
        if not args.keep:
            rest.drop_database(admin, name)
    rest.RESULTS_DIR.mkdir(exist_ok=True)
    out = rest.RESULTS_DIR / f"search_scale_{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
