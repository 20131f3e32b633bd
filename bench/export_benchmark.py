#!/usr/bin/env python3
"""Bulk Data export ($export) throughput on a fresh PostgreSQL database.

    python bench/export_benchmark.py [--database-server URL] [--resources 1000000]
        [--load-workers N] [--keep] [--seed 7] [--existing NAME]

What one run does:

1. Creates the database ``fhirserver_bench_export_<resources>`` on the server
   given by ``--database-server`` (dropped at the end unless ``--keep``) and
   loads ``--resources`` resources: 1 % Patients, 200 Practitioners, the rest
   Observations copied from the Synthea Observations in shared/fhir-data with
   a random Patient as subject (the generators of bench/search_scale_benchmark.py),
   written by ``storage/bulk.insert_new`` in transactions of 1,000 (resource,
   history and search index rows, as the server writes them). The generated
   data is not validated again: the load is not what is measured.
2. Baseline, same run: the raw read an export cannot avoid — every live
   resource's body per type, through psycopg, in keyset batches of 1,000 on
   ``pk``, joined into ndjson bytes in memory (no job, no files stored).
3. ``GET [base]/$export`` (Prefer: respond-async) through the real HTTP stack
   (Flask test client), then the worker (``bulk/worker.run_queued``) timed
   until the job completes, then the manifest: its counts must add up to every
   resource. The same for ``GET [base]/Patient/$export`` (compartment filter).
4. Resources/s of each, the ratio to the baseline, and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))
sys.path.insert(0, str(BENCH_DIR))

import rest_benchmark as rest  # noqa: E402
import search_scale_benchmark as scale  # noqa: E402

from fhirserver import create_app  # noqa: E402
from fhirserver.bulk import worker  # noqa: E402
from fhirserver.settings import Settings  # noqa: E402
from fhirserver.storage.bulk import insert_new  # noqa: E402
from fhirserver.storage.migrate import upgrade  # noqa: E402
from fhirserver.storage.session import Database  # noqa: E402

BATCH = 1000

# ------------------------------------------------------------------------ load

_WORKER: dict = {}


def _init_worker(url: str, templates: list[bytes]) -> None:
    _WORKER["database"] = Database(url, pool_size=1)
    _WORKER["templates"] = templates


def _write(database: Database, resources: list[dict]) -> int:
    with database.transaction(write=True) as conn:
        return len(insert_new(conn, resources).created)


def _load_chunk(job: tuple[int, int, int, int]) -> int:
    start, stop, patients, seed = job
    resources = scale.make_observations(start, stop, patients, seed, _WORKER["templates"])
    return _write(_WORKER["database"], resources)


def load(url: str, args) -> dict:
    database = Database(url, pool_size=1)
    upgrade(database.engine)
    started = time.perf_counter()
    patients = max(1, args.resources // 100)
    people = scale.make_people(patients, args.seed)[: args.resources]
    for i in range(0, len(people), BATCH):
        _write(database, people[i : i + BATCH])
    database.dispose()
    observations = max(0, args.resources - len(people))
    chunks = [
        (start, min(start + BATCH, observations), patients, args.seed)
        for start in range(0, observations, BATCH)
    ]
    written = 0
    context = multiprocessing.get_context("fork")
    templates = scale.observation_templates()
    with context.Pool(args.load_workers, _init_worker, (url, templates)) as pool:
        for count in pool.imap_unordered(_load_chunk, chunks):
            written += count
    seconds = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    total = len(people) + written
    return {"resources": total, "seconds": round(seconds, 1), "load_workers": args.load_workers}


# ------------------------------------------------------------------------ measure


def raw_read(url: str) -> dict:
    """Every live body, per type, in keyset batches through psycopg: the floor of an export."""
    started = time.perf_counter()
    count, size = 0, 0
    with psycopg.connect(url) as conn:
        types = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT resource_type FROM resource ORDER BY resource_type"
            )
        ]
        for resource_type in types:
            last = 0
            while True:
                rows = conn.execute(
                    "SELECT pk, body::text FROM resource WHERE resource_type = %s"
                    " AND NOT deleted AND pk > %s ORDER BY pk LIMIT %s",
                    (resource_type, last, BATCH),
                ).fetchall()
                if not rows:
                    break
                chunk = b"\n".join(body.encode() for _, body in rows) + b"\n"
                count += len(rows)
                size += len(chunk)
                last = rows[-1][0]
    seconds = time.perf_counter() - started
    return {
        "resources": count,
        "bytes": size,
        "seconds": round(seconds, 2),
        "rate": count / seconds,
    }


def export(url: str, path: str) -> dict:
    """Kick-off over HTTP, the worker timed to completion, the manifest checked."""
    settings = Settings(database_url=url, bulk_worker=False)
    app = create_app(settings)
    database = app.extensions["fhirserver"].database
    try:
        client = app.test_client()
        kick_off = client.get(f"/fhir/{path}", headers={"Prefer": "respond-async"})
        assert kick_off.status_code == 202, kick_off.get_data(as_text=True)
        status = kick_off.headers["Content-Location"].replace("http://localhost", "")
        started = time.perf_counter()
        assert worker.run_queued(database) == 1
        seconds = time.perf_counter() - started
        manifest = client.get(status).get_json()
        count = sum(item["count"] for item in manifest["output"])
        files = len(manifest["output"])
    finally:
        database.dispose()
    return {
        "path": path,
        "resources": count,
        "files": files,
        "seconds": round(seconds, 2),
        "rate": count / seconds,
    }


# ------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-server", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--load-workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--existing",
        metavar="NAME",
        help="export an already loaded database of that name on --database-server"
        " (e.g. the 1M one bench/search_scale_benchmark.py --keep leaves) instead of"
        " loading one; it is neither created nor dropped",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    admin = rest.pg_url(args.database_server)
    name = args.existing or f"fhirserver_bench_export_{args.resources}"
    url = rest.with_database(admin, name)
    results: dict = {
        "benchmark": "export",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": multiprocessing.cpu_count()},
        "database": name,
    }
    if not args.existing:
        rest.drop_database(admin, name)
        rest.create_database(admin, name)
    try:
        if args.existing:
            print(f"database {name}: exporting what it holds", flush=True)
            # An older database gets the job tables of this version first.
            migrate = [sys.executable, "-m", "fhirserver", "db", "upgrade", "--database", url]
            subprocess.run(migrate, check=True, capture_output=True)
        else:
            print(f"database {name}: loading {args.resources:,} resources ...", flush=True)
            results["load"] = load(url, args)
            print(f"load: {results['load']}")
        results["raw"] = raw_read(url)
        total = results["raw"]["resources"]
        print(
            f"\n{'what':32} {'resources':>10} {'files':>6} {'seconds':>8} {'res/s':>9} {'/raw':>6}"
        )
        raw = results["raw"]
        print(
            f"{'raw keyset read (psycopg)':32} {total:>10,} {'':>6} {raw['seconds']:>8} {raw['rate']:>9,.0f}"
        )
        results["exports"] = []
        for path in ("$export", "Patient/$export"):
            figures = export(url, path)
            figures["vs_raw"] = figures["rate"] / raw["rate"]
            results["exports"].append(figures)
            print(
                f"{'GET ' + path:32} {figures['resources']:>10,} {figures['files']:>6} "
                f"{figures['seconds']:>8} {figures['rate']:>9,.0f} {figures['vs_raw']:>6.2f}"
            )
        system = results["exports"][0]
        if system["resources"] != total:
            raise SystemExit(f"$export wrote {system['resources']} resources, not {total}")
    finally:
        if not args.keep and not args.existing:
            rest.drop_database(admin, name)
    rest.RESULTS_DIR.mkdir(exist_ok=True)
    out = rest.RESULTS_DIR / f"export_{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
