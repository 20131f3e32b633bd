#!/usr/bin/env python3
"""Bulk load benchmark on PostgreSQL: ``fhirserver load`` against a raw ``COPY`` of the same lines.

    python bench/load_benchmark.py [--database-server URL] [--copies N] [--workers N] [--batch-size N]

1. Writes the 10 Synthea patient Bundles of shared/fhir-data ``--copies``
   times as Bulk Data ndjson (one file per type; each copy with fresh ids and
   its ``urn:uuid:`` references rewritten, as bench/search_benchmark.py does)
   into a temporary folder.
2. Creates a fresh database on ``--database-server`` (default
   postgresql://postgres@127.0.0.1:5432/postgres), migrates it, and runs the
   real command, ``fhirserver load FOLDER --workers N``, in a subprocess:
   validation, index extraction and the batched writes of resource, history
   and index rows. Reports resources/s (the command's own figure and the wall
   time of the whole process).
3. Baseline, same run, same database: ``COPY`` of the same JSON lines into a
   plain table ``(id text, body jsonb)`` through psycopg, with no validation
   and no indexes.
   Both report CPU seconds as well: of the loading processes (the command
   and its workers, or this script's COPY thread) and of the PostgreSQL
   backends serving the benchmark's database (sampled from /proc). On a shared machine the rates depend on what else
   runs; CPU per resource does not, and ``2 / (CPU s per resource)`` is the
   most that 2 idle cores could do.
4. Unless ``--clients 0``: the same Synthea data as transaction Bundles posted
   over HTTP to ``fhirserver serve --workers 2`` on another fresh database by
   ``--clients`` threads (bench/transaction_ingest.py).
5. Drops the databases; writes the figures to bench/results/load-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson
import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import transaction_ingest  # noqa: E402

BUNDLES = ROOT.parent / "shared" / "fhir-data" / "synthea" / "bundles"
SUMMARY = re.compile(
    r"(?P<files>\d+) files, (?P<read>\d+) resources read, (?P<created>\d+) created, "
    r"(?P<existing>\d+) already present, (?P<rejected>\d+) rejected in (?P<seconds>[\d.]+) s"
)


def write_ndjson(folder: Path, copies: int) -> int:
    """The patient Bundles ``copies`` times as ``<Type>.ndjson`` files; returns the line count."""
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for copy in range(copies):
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
                by_type[resource["resourceType"]].append(orjson.dumps(resource))
    for resource_type, lines in by_type.items():
        (folder / f"{resource_type}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return sum(len(lines) for lines in by_type.values())


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database, sampled while they run.

    Other work on a shared machine (other databases) is not counted; what a
    backend spends after the last sample (< 20 ms) is lost.
    """

    def __init__(self, admin_dsn: str, database: str):
        self.admin_dsn, self.database = admin_dsn, database
        self.ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> BackendCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.ticks.values()) / os.sysconf("SC_CLK_TCK")

    def _poll(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.database,)
                ).fetchall()
                for (pid,) in rows:
                    try:
                        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    except OSError:
                        continue  # ended, or PostgreSQL runs elsewhere
                    self.ticks[pid] = max(self.ticks.get(pid, 0), int(fields[11]) + int(fields[12]))
                self._stop.wait(0.02)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_load(folder: Path, url: str, admin: str, workers: int, batch_size: int) -> dict:
    command = [
        sys.executable, "-m", "fhirserver", "load", str(folder),
        "--database", url, "--workers", str(workers), "--batch-size", str(batch_size),
    ]  # fmt: skip
    cpu = children_cpu_seconds()
    with BackendCpu(admin, make_url(url).database or "") as backends:
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - started
    cpu = children_cpu_seconds() - cpu
    if done.returncode != 0:
        sys.exit(f"fhirserver load failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    match = SUMMARY.search(done.stdout)
    assert match, done.stdout
    figures = {k: float(v) if k == "seconds" else int(v) for k, v in match.groupdict().items()}
    figures["wall_seconds"] = wall
    figures["cpu_seconds"] = cpu
    figures["postgres_cpu_seconds"] = backends.seconds
    figures["summary"] = done.stdout.strip()
    return figures


def run_copy(folder: Path, dsn: str, admin: str) -> dict:
    """COPY every line into raw_resource(id, body jsonb)."""
    with psycopg.connect(dsn) as conn, BackendCpu(admin, make_url(dsn).database or "") as backends:
        conn.execute("CREATE TABLE raw_resource (id text, body jsonb)")
        conn.commit()
        rows = 0
        cpu = time.thread_time()
        started = time.perf_counter()
        with conn.cursor() as cursor:
            with cursor.copy("COPY raw_resource (id, body) FROM STDIN") as copy:
                for path in sorted(folder.glob("*.ndjson")):
                    with path.open("rb") as f:
                        for line in f:
                            copy.write_row((orjson.loads(line)["id"], line.rstrip(b"\n").decode()))
                            rows += 1
        conn.commit()
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "postgres_cpu_seconds": backends.seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-server", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--clients",
        type=int,
        default=4,
        help="HTTP clients posting the transaction Bundles (0: skip that phase)",
    )
    args = parser.parse_args()

    server = make_url(args.database_server).set(drivername="postgresql")
    admin = server.render_as_string(hide_password=False)
    name = f"fhirserver_load_bench_{uuid.uuid4().hex[:8]}"
    url = server.set(database=name).render_as_string(hide_password=False)
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        folder = Path(tmp)
        lines = write_ndjson(folder, args.copies)
        size = sum(p.stat().st_size for p in folder.glob("*.ndjson"))
        print(f"Synthea x{args.copies}: {lines} resources, {size / 1e6:.1f} MB of ndjson")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            migrate = [sys.executable, "-m", "fhirserver", "db", "upgrade", "--database", url]
            subprocess.run(migrate, check=True, capture_output=True, cwd=ROOT)
            load_average = os.getloadavg()[0]
            load = run_load(folder, url, admin, args.workers, args.batch_size)
            copy = run_copy(folder, url, admin)
            with psycopg.connect(url) as conn:
                stored = conn.execute("SELECT count(*) FROM resource").fetchone()
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # Patient Bundles share a few Organizations/Practitioners: read, but stored once.
    assert stored is not None and stored[0] == load["created"], (stored, load)
    assert load["read"] == lines == copy["rows"] and load["rejected"] == 0, load
    load_rate = lines / load["seconds"]
    wall_rate = lines / load["wall_seconds"]
    copy_rate = lines / copy["seconds"]
    load_cpu_ms = 1000 * (load["cpu_seconds"] + load["postgres_cpu_seconds"]) / lines
    copy_cpu_ms = 1000 * (copy["cpu_seconds"] + copy["postgres_cpu_seconds"]) / lines
    print(f"load average before the run: {load_average:.2f} on {os.cpu_count()} CPUs")
    print(load["summary"])
    print(
        f"\n{'phase':36} {'resources/s':>11} {'seconds':>8} {'client CPU s':>12} "
        f"{'PG CPU s':>9} {'CPU ms/res':>10} {'2 idle cores':>12}"
    )
    for label, rate, seconds, figures, cpu_ms in (
        ("fhirserver load (own timing)", load_rate, load["seconds"], load, load_cpu_ms),
        ("fhirserver load (process wall)", wall_rate, load["wall_seconds"], load, load_cpu_ms),
        ("raw COPY (id text, body jsonb)", copy_rate, copy["seconds"], copy, copy_cpu_ms),
    ):
        print(
            f"{label:36} {rate:11.0f} {seconds:8.1f} {figures['cpu_seconds']:12.1f} "
            f"{figures['postgres_cpu_seconds']:9.1f} {cpu_ms:10.3f} {2000 / cpu_ms:12.0f}"
        )
    print(
        f"\nload / raw COPY: {load_rate / copy_rate:.3f} (rate), {copy_cpu_ms / load_cpu_ms:.3f} (CPU)"
    )
    transactions = None
    if args.clients:
        # The same Synthea data as transaction Bundles over HTTP (a fresh database).
        transactions = transaction_ingest.run_transactions(admin, args.copies, args.clients)
        cpu = transactions["cpu"] or {}
        per = 1000 / transactions["resources"]
        print(
            f"transaction Bundles over HTTP ({args.clients} clients, serve --workers 2):"
            f" {transactions['resources_per_s']:.0f} resources/s"
            f" ({transactions['bundles']} Bundles, {transactions['resources']} resources,"
            f" {transactions['seconds']:.1f} s; server CPU {cpu.get('server_cpu_s', 0) * per:.2f} ms,"
            f" PostgreSQL CPU {cpu.get('postgres_cpu_s', 0) * per:.2f} ms per resource);"
            f" / raw COPY: {transactions['resources_per_s'] / copy_rate:.3f}"
        )

    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (results / f"load-{stamp}.json").write_text(
        json.dumps(
            {
                "copies": args.copies,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "resources": lines,
                "ndjson_bytes": size,
                "load_average_before": load_average,
                "load": load,
                "load_resources_per_s": load_rate,
                "load_wall_resources_per_s": wall_rate,
                "load_cpu_ms_per_resource": load_cpu_ms,
                "copy": copy,
                "copy_resources_per_s": copy_rate,
                "copy_cpu_ms_per_resource": copy_cpu_ms,
                "ratio": load_rate / copy_rate,
                "transactions_over_http": transactions,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
