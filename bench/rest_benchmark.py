#!/usr/bin/env python3
"""Core REST benchmark: read by id, create and update against raw PostgreSQL (issue 2).

    python bench/rest_benchmark.py [--database-server URL] [--connections N]
                                   [--duration S] [--patients N]

What one run does (see docs/PERFORMANCE.md, "Core REST (issue 2)"):

1. Creates a fresh database ``fhirserver_bench_<random>`` on the PostgreSQL server
   given by ``--database-server`` and starts ``fhirserver serve --workers 2`` on a
   free 127.0.0.1 port against it (production mode: granian, 2 processes). The
   server is always stopped and the database always dropped at the end, also on
   Ctrl-C, SIGTERM and errors.
2. Loads ``--patients`` realistic Patients (generated deterministically from the
   Synthea Patients in shared/fhir-data) with concurrent POSTs.
3. Measures read by id (random loaded ids), create (POST) and update (PUT of
   existing ids, disjoint per wrk thread) with ``wrk`` on 127.0.0.1, each phase
   bounded by ``--duration`` seconds and ``--max-requests`` requests.
4. Measures the raw database with psycopg 3 at the same concurrency (one process
   per connection and one thread per connection, keeping the faster; see
   ``--raw-mode``): primary-key SELECT of the stored JSON text from a plain table
   (id text primary key, body jsonb) holding the same Patients as the server
   stored them, and single-row autocommit INSERT into a plain table of the same
   shape.
5. Prints req/s, p50/p99 latency and errors per phase, and the ratios against
   the targets (read >= 0.5 x raw SELECT, create >= 0.3 x raw INSERT); writes the
   same as JSON to bench/results/ (``--check``: exit status 1 when one is missed).
6. Reports, per phase, the CPU time the server, PostgreSQL and the load
   generator spent per request (from /proc), and how busy anything else kept
   the machine: figures taken while other work runs are flagged.

wrk is required (``apt-get install -y wrk`` on Debian/Ubuntu, ``brew install wrk``
on macOS): a load generator written in Python would take CPU from the server
on a small machine.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
FHIR_DATA = Path(__file__).resolve().parents[2] / "shared" / "fhir-data"
PATIENT_TEMPLATES = FHIR_DATA / "synthea" / "bulk-10-patients" / "Patient.000.ndjson"
WRK_SCRIPT = BENCH_DIR / "wrk_fhir.lua"
RESULTS_DIR = BENCH_DIR / "results"

HOST = "127.0.0.1"
BASE_PATH = "/fhir"
TARGETS = {"read": 0.5, "create": 0.3}
WRK_INSTALL_HINT = (
    "wrk is not installed. Install it with `sudo apt-get install -y wrk` (Debian/Ubuntu), "
    "`sudo dnf install wrk` (Fedora) or `brew install wrk` (macOS), or pass --wrk /path/to/wrk."
)


# --------------------------------------------------------------------------- data


FAMILY = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts"
).split()
GIVEN = {
    "female": (
        "Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty "
        "Sandra Margaret Ashley Kimberly Emily Donna Michelle Carol Amanda Melissa Deborah Stephanie"
    ).split(),
    "male": (
        "James Robert John Michael David William Richard Joseph Thomas Christopher Charles Daniel "
        "Matthew Anthony Mark Donald Steven Andrew Paul Joshua Kenneth Kevin Brian George Timothy"
    ).split(),
}
STREETS = (
    "Main Oak Pine Maple Cedar Elm Washington Lake Hill Walnut Spring North Ridge Church Willow "
    "Mill Park Sunset Railroad Jackson"
).split()
STREET_KINDS = ("St", "Ave", "Rd", "Ln", "Dr", "Ct", "Way", "Blvd")
CITIES = (
    ("Wichita", "KS", "67202", 37.6872, -97.3301),
    ("Overland Park", "KS", "66204", 38.9822, -94.6708),
    ("Kansas City", "KS", "66101", 39.1142, -94.6275),
    ("Olathe", "KS", "66061", 38.8814, -94.8191),
    ("Topeka", "KS", "66603", 39.0473, -95.6752),
    ("Lawrence", "KS", "66044", 38.9717, -95.2353),
    ("Manhattan", "KS", "66502", 39.1836, -96.5717),
    ("Salina", "KS", "67401", 38.8403, -97.6114),
    ("Hutchinson", "KS", "67501", 38.0608, -97.9298),
    ("Emporia", "KS", "66801", 38.4039, -96.1817),
)

# Used when shared/fhir-data is not next to the repository.
FALLBACK_TEMPLATE = {
    "resourceType": "Patient",
    "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},
    "identifier": [
        {"system": "https://github.com/synthetichealth/synthea", "value": "x"},
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "MR",
                        "display": "Medical Record Number",
                    }
                ],
                "text": "Medical Record Number",
            },
            "system": "http://hospital.smarthealthit.org",
            "value": "x",
        },
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "SS",
                        "display": "Social Security Number",
                    }
                ],
                "text": "Social Security Number",
            },
            "system": "http://hl7.org/fhir/sid/us-ssn",
            "value": "x",
        },
    ],
    "name": [{"use": "official", "family": "x", "given": ["x"]}],
    "telecom": [{"system": "phone", "value": "x", "use": "home"}],
    "gender": "female",
    "birthDate": "1970-01-01",
    "address": [{"line": ["x"], "city": "x", "state": "KS", "postalCode": "x", "country": "US"}],
    "maritalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                "code": "M",
                "display": "Married",
            }
        ],
        "text": "Married",
    },
    "communication": [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": "en-US", "display": "English"}],
                "text": "English",
            }
        }
    ],
}


def load_templates() -> list[dict]:
    if not PATIENT_TEMPLATES.is_file():
        print(f"note: {PATIENT_TEMPLATES} not found; using a built-in Patient template")
        return [FALLBACK_TEMPLATE]
    with PATIENT_TEMPLATES.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def make_patients(count: int, seed: int, templates: list[dict]) -> list[dict]:
    """``count`` distinct, realistic Patients (no id), the same for the same seed."""
    rng = random.Random(seed)
    epoch = date(1925, 1, 1)
    out = []
    for i in range(count):
        p = copy.deepcopy(templates[i % len(templates)])
        p.pop("id", None)
        gender = rng.choice(("female", "male"))
        family = rng.choice(FAMILY)
        given = [rng.choice(GIVEN[gender]), rng.choice(GIVEN[gender])]
        born = epoch + timedelta(days=rng.randrange(365 * 98))
        pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        city, state, postal, lat, lon = rng.choice(CITIES)
        p["gender"] = gender
        p["birthDate"] = born.isoformat()
        if "deceasedDateTime" in p:
            if rng.random() < 0.2:
                died = born + timedelta(days=rng.randrange(365 * 20, 365 * 95))
                p["deceasedDateTime"] = (
                    min(died, date(2024, 12, 31)).isoformat() + "T08:30:00-05:00"
                )
            else:
                del p["deceasedDateTime"]
        names = p.get("name") or [{"use": "official"}]
        names[0]["family"] = family
        names[0]["given"] = given
        if "prefix" in names[0]:
            names[0]["prefix"] = ["Mrs." if gender == "female" else "Mr."]
        for extra in names[1:]:
            extra["given"] = given
        p["name"] = names
        for ident in p.get("identifier", []):
            code = ((ident.get("type") or {}).get("coding") or [{}])[0].get("code")
            if code in (None, "MR"):
                ident["value"] = pid
            elif code == "SS":
                ident["value"] = f"999-{rng.randrange(10, 99)}-{rng.randrange(1000, 9999)}"
            elif code == "DL":
                ident["value"] = f"S99{rng.randrange(1000000, 9999999)}"
            elif code == "PPN":
                ident["value"] = f"X{rng.randrange(10000000, 99999999)}X"
        p["telecom"] = [
            {
                "system": "phone",
                "value": f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
                "use": "home",
            }
        ]
        for addr in p.get("address", []):
            addr["line"] = [
                f"{rng.randrange(1, 9999)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}"
            ]
            addr["city"], addr["state"], addr["postalCode"] = city, state, postal
            for ext in addr.get("extension", []):
                for sub in ext.get("extension", []):
                    if sub.get("url") == "latitude":
                        sub["valueDecimal"] = round(lat + rng.uniform(-0.1, 0.1), 6)
                    elif sub.get("url") == "longitude":
                        sub["valueDecimal"] = round(lon + rng.uniform(-0.1, 0.1), 6)
        for ext in p.get("extension", []):
            if ext.get("url", "").endswith("patient-mothersMaidenName"):
                ext["valueString"] = f"{rng.choice(GIVEN['female'])} {rng.choice(FAMILY)}"
        out.append(p)
    return out


def dumps(resource: dict) -> str:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False)


def update_template(patient: dict) -> str:
    """The Patient as a PUT body with ``@@ID@@`` and ``@@N@@`` placeholders (see wrk_fhir.lua)."""
    body = {"resourceType": "Patient", "id": "@@ID@@"}
    body.update((k, v) for k, v in patient.items() if k not in ("resourceType", "id", "meta"))
    body["telecom"] = [{"system": "phone", "value": "555-@@N@@", "use": "home"}]
    text = dumps(body)
    assert text.index("@@ID@@") < text.index("@@N@@")
    return text


# --------------------------------------------------------------------------- database


def pg_url(url: str) -> str:
    """A libpq URL (drops SQLAlchemy's ``+psycopg`` driver suffix)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit(parts._replace(scheme=scheme))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(pg_url(url))._replace(path="/" + name))


def create_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        try:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        except psycopg.errors.SyntaxError:  # PostgreSQL < 13
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def checkpoint(url: str) -> None:
    """Start every phase from a clean buffer state (no checkpoint in the middle of it)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.Error as exc:  # needs superuser or pg_checkpoint; not essential
        print(f"note: CHECKPOINT skipped ({exc.__class__.__name__})")


def prepare_raw_tables(url: str, ids: list[str], bodies: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bench_raw")
        conn.execute("CREATE TABLE bench_raw.patient (id text PRIMARY KEY, body jsonb NOT NULL)")
        conn.execute(
            "CREATE TABLE bench_raw.insert_target (id text PRIMARY KEY, body jsonb NOT NULL)"
        )
        with conn.cursor() as cur:
            with cur.copy("COPY bench_raw.patient (id, body) FROM STDIN") as copy_:
                for row in zip(ids, bodies, strict=True):
                    copy_.write_row(row)
        conn.execute("VACUUM ANALYZE bench_raw.patient")
        conn.execute("VACUUM ANALYZE")  # the server's tables too, after the load


def database_facts(url: str) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        facts = {"version": conn.execute("SHOW server_version").fetchone()[0]}
        for setting in (
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "max_connections",
            "wal_level",
        ):
            facts[setting] = conn.execute(
                sql.SQL("SHOW {}").format(sql.Identifier(setting))
            ).fetchone()[0]
    return facts


# ------------------------------------------------------------------ raw baseline


SELECT_SQL = "SELECT body::text FROM bench_raw.patient WHERE id = %s"
INSERT_SQL = "INSERT INTO bench_raw.insert_target (id, body) VALUES (%s, %s::jsonb)"


def uuid7() -> str:
    """A time-ordered UUIDv7, like the ids the server assigns (same B-tree locality)."""
    value = (time.time_ns() // 1_000_000 & ((1 << 48) - 1)) << 80 | int.from_bytes(
        os.urandom(10), "big"
    )
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def raw_worker(kind, url, payload, worker_no, seed, warmup, duration, max_ops, barrier, results):
    """One connection: the same statement in a loop, timed; results go to ``results``."""
    latencies = array("d")
    errors = 0
    count = 0
    try:
        rng = random.Random(seed * 1000 + worker_no)
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.cursor()
            n = len(payload)
            if kind == "select":

                def op(i):
                    cur.execute(SELECT_SQL, (payload[rng.randrange(n)],), prepare=True)
                    if cur.fetchone() is None:
                        raise LookupError("row not found")

            else:

                def op(i):
                    cur.execute(INSERT_SQL, (uuid7(), payload[i % n]), prepare=True)

            op(0)  # connect, plan and prepare before the clock starts
            barrier.wait(timeout=120)
            clock = time.perf_counter
            measure_from = clock() + warmup
            stop_at = measure_from + duration
            i = 1
            while count < max_ops:
                t0 = clock()
                if t0 >= stop_at:
                    break
                try:
                    op(i)
                except psycopg.Error:
                    errors += 1
                    if conn.broken:
                        break
                i += 1
                if t0 >= measure_from:
                    latencies.append(clock() - t0)
                    count += 1
    except Exception as exc:  # reported, counted as an error, never hangs the run
        errors += 1
        print(f"raw worker {worker_no}: {exc!r}", file=sys.stderr)
        try:
            barrier.abort()
        except Exception:
            pass
    results.put((worker_no, count, errors, latencies.tobytes()))


def _raw_process(*args) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    raw_worker(*args)


def run_raw(kind: str, url: str, payload: list[str], args, server_pid: int) -> dict:
    """The baseline at ``args.connections`` connections, as processes, as threads, or
    (``--raw-mode best``, the default) both, keeping the faster: with 2 cores neither
    wins reliably (processes use more client CPU, threads are bounded by the GIL)."""
    modes = ("processes", "threads") if args.raw_mode == "best" else (args.raw_mode,)
    runs = {}
    for mode in modes:
        if runs:
            checkpoint(url)
        runs[mode] = _run_raw(kind, url, payload, args, server_pid, mode)
        runs[mode]["mode"] = mode
    best = max(runs.values(), key=lambda r: r["rps"])
    result = dict(best)
    if len(runs) > 1:
        result["all_modes"] = {
            m: {k: r[k] for k in ("rps", "p50_ms", "p99_ms", "errors")} for m, r in runs.items()
        }
    return result


def _run_raw(kind: str, url: str, payload: list[str], args, server_pid: int, mode: str) -> dict:
    n = args.connections
    max_ops = max(1, args.max_requests // n)
    if mode == "processes":
        ctx = multiprocessing.get_context("fork")
        barrier, results = ctx.Barrier(n + 1), ctx.Queue()
        spawn, target = ctx.Process, _raw_process
    else:
        barrier, results = threading.Barrier(n + 1), queue.Queue()
        spawn, target = threading.Thread, raw_worker
    common = (args.seed, args.warmup, args.duration, max_ops, barrier, results)
    workers = [
        spawn(target=target, args=(kind, url, payload, k, *common), daemon=True) for k in range(n)
    ]
    for w in workers:
        w.start()
    collected = []
    deadline = time.monotonic() + args.warmup + args.duration + 120
    cpu = None
    try:
        try:
            barrier.wait(timeout=120)
            time.sleep(args.warmup)
            client_pids = [
                w.pid for w in workers if isinstance(w, multiprocessing.process.BaseProcess)
            ]
            before = cpu_snapshot(server_pid, client_pids)
            time.sleep(args.duration)
            cpu = cpu_delta(before, cpu_snapshot(server_pid, client_pids))
        except threading.BrokenBarrierError:
            pass  # a worker failed before starting; its error is in the results
        while len(collected) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"raw {kind}: workers did not finish in time")
            collected.append(results.get(timeout=left))
    finally:
        for w in workers:
            w.join(timeout=10)
            if isinstance(w, multiprocessing.process.BaseProcess) and w.is_alive():
                w.terminate()
    latencies = array("d")
    total = errors = 0
    for _, count, errs, lat in collected:
        total += count
        errors += errs
        latencies.frombytes(lat)
    ordered = sorted(latencies)
    return {
        "requests": total,
        "seconds": args.duration,
        "rps": total / args.duration,
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "errors": errors,
        "cpu": cpu,
    }


def percentile(ordered, p: float) -> float:
    if not ordered:
        return float("nan")
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


# --------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(
    database_url: str, port: int, log_path: Path, server_threads: int | None
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from fhirserver.cli import main; main()",
        "serve",
        "--workers",
        "2",
        "--host",
        HOST,
        "--port",
        str(port),
        "--database",
        database_url,
    ]
    if server_threads:
        cmd += ["--threads", str(server_threads)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    log = log_path.open("wb")
    # Own session: Ctrl-C reaches this script only, which then stops the server cleanly.
    return subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_until_ready(proc: subprocess.Popen, port: int, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}:\n{tail(log_path)}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=5)
            conn.request(
                "GET", f"{BASE_PATH}/metadata", headers={"Accept": "application/fhir+json"}
            )
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except OSError as exc:
            last = repr(exc)
        time.sleep(0.25)
    raise RuntimeError(
        f"the server did not answer GET {BASE_PATH}/metadata in {timeout:.0f} s ({last}):\n{tail(log_path)}"
    )


def stop_server(proc: subprocess.Popen) -> None:
    """Ask granian's main process to shut down (it stops its workers); if it does not,
    kill the server's own process group (the session it was started in)."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10)):
        if proc.poll() is not None:
            break
        try:
            # The main process only: signalling every worker as well can hang granian.
            proc.send_signal(sig)
            proc.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the server's process group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def worker_pids(proc: subprocess.Popen) -> list[int]:
    """The granian worker processes (children of the server process), for profiling."""
    try:
        out = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in out.split()]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- CPU accounting

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int | str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _processes() -> dict[int, tuple[str, int, float, float]]:
    """pid -> (comm, ppid, own CPU seconds, reaped children's CPU seconds), from /proc."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue
        f = _stat(entry.name)
        if f is None:
            continue
        # after "(comm) ": state ppid ... utime(11) stime(12) cutime(13) cstime(14)
        out[int(entry.name)] = (
            comm,
            int(f[1]),
            (int(f[11]) + int(f[12])) / CLK_TCK,
            (int(f[13]) + int(f[14])) / CLK_TCK,
        )
    return out


def cpu_snapshot(server_pid: int, client_pids: list[int]) -> dict | None:
    """CPU seconds used so far by: the server (its process tree), PostgreSQL (all its
    processes plus the exited backends reaped by the postmaster), the load generator
    (this process, its reaped children such as wrk, and client_pids), and the whole
    machine (/proc/stat, to see interference from anything else)."""
    if not Path("/proc/stat").exists():
        return None
    procs = _processes()
    server_tree = {server_pid}
    changed = True
    while changed:
        changed = False
        for pid, (_, ppid, _, _) in procs.items():
            if ppid in server_tree and pid not in server_tree:
                server_tree.add(pid)
                changed = True
    postgres = 0.0
    for comm, ppid, own, children in procs.values():
        if comm == "postgres" or comm.startswith("postgres"):
            postgres += own
            if procs.get(ppid, ("",))[0] != "postgres":  # the postmaster: add its exited backends
                postgres += children
    server = sum(procs[p][2] for p in server_tree if p in procs)
    own = os.times()
    client = own.user + own.system + own.children_user + own.children_system
    client += sum(procs[p][2] for p in client_pids if p in procs)
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # all but idle and iowait
    return {
        "wall": time.monotonic(),
        "server": server,
        "postgres": postgres,
        "client": client,
        "machine": busy,
    }


def cpu_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    d = {k: after[k] - before[k] for k in before}
    wall = d.pop("wall")
    d["other"] = max(0.0, d["machine"] - d["server"] - d["postgres"] - d["client"])
    out = {"wall_s": round(wall, 3)}
    out.update({f"{k}_cpu_s": round(v, 2) for k, v in d.items()})
    return out


# ---------------------------------------------------------------------- HTTP load


LOCATION_ID = re.compile(r"/Patient/([A-Za-z0-9\-.]{1,64})/_history/")


def load_patients(
    port: int, patients: list[dict], connections: int, timeout: float
) -> tuple[list[str], list[str], float]:
    """POST every Patient over ``connections`` keep-alive connections; returns ids and stored bodies."""
    ids: list[str | None] = [None] * len(patients)
    stored: list[str | None] = [None] * len(patients)
    failures: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(patients)))
    deadline = time.monotonic() + timeout
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

    def worker():
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            body = dumps(patients[i]).encode()
            for attempt in (1, 2):
                try:
                    conn.request("POST", f"{BASE_PATH}/Patient", body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, port, timeout=30)
                    if attempt == 2:
                        with lock:
                            failures.append(repr(exc))
                        data, resp = b"", None
            if resp is None:
                continue
            match = LOCATION_ID.search(resp.getheader("Location") or "")
            if resp.status != 201 or not match:
                with lock:
                    failures.append(f"HTTP {resp.status}: {data[:300]!r}")
                continue
            ids[i] = match.group(1)
            if data:
                stored[i] = data.decode()
            else:
                stored[i] = dumps({"resourceType": "Patient", "id": ids[i], **patients[i]})
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 60))
    elapsed = time.perf_counter() - started
    done = [(i, b) for i, b in zip(ids, stored, strict=True) if i is not None]
    if failures:
        print(f"load: {len(failures)} failed POSTs, first: {failures[0]}")
    if len(done) < 0.99 * len(patients):
        raise RuntimeError(f"load: only {len(done)} of {len(patients)} Patients were created")
    return [i for i, _ in done], [b for _, b in done], elapsed


def check_read(port: int, id_: str) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", f"{BASE_PATH}/Patient/{id_}", headers={"Accept": "application/fhir+json"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200 or json.loads(body).get("id") != id_:
        raise RuntimeError(f"GET Patient/{id_} answered {resp.status}: {body[:300]!r}")


# ---------------------------------------------------------------------------- wrk


def wrk_version(wrk: str) -> str:
    try:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (
        (out.stdout or out.stderr).splitlines()[0].strip()
        if (out.stdout or out.stderr)
        else "unknown"
    )


def run_wrk(
    args, port: int, mode: str, data_file: Path, seconds: int, seed: int, server_pid: int
) -> dict:
    threads = min(args.wrk_threads, args.connections)
    per_thread = max(1, math.ceil(args.max_requests / threads))
    cmd = [
        args.wrk,
        "-t",
        str(threads),
        "-c",
        str(args.connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        f"http://{HOST}:{port}{BASE_PATH}",
        "--",
        mode,
        str(data_file),
        str(per_thread),
        str(seed),
        str(threads),
    ]
    before = cpu_snapshot(server_pid, [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_delta(before, cpu_snapshot(server_pid, []))
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    if proc.stderr.strip():
        print(proc.stderr.strip())
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    if raw["requests"] >= per_thread * threads:
        print(
            f"warning: {mode} reached --max-requests before --duration ended; its req/s is a lower bound"
        )
    socket_errors = sum(v for k, v in raw["errors"].items() if k != "status")
    elapsed = raw["duration_us"] / 1e6
    return {
        "requests": raw["requests"],
        "seconds": round(elapsed, 3),
        "rps": raw["requests"] / elapsed if elapsed else 0.0,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "errors": socket_errors + raw["unexpected_status"],
        "cpu": cpu,
        "wrk": raw,
        "command": " ".join(cmd),
    }


def rest_phase(args, port: int, mode: str, data_file: Path, server: subprocess.Popen) -> dict:
    if args.warmup > 0:
        run_wrk(args, port, mode, data_file, max(1, round(args.warmup)), args.seed + 17, server.pid)
    profilers = start_profilers(args, mode, server)
    try:
        return run_wrk(args, port, mode, data_file, args.duration, args.seed, server.pid)
    finally:
        for p in profilers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_profilers(args, mode: str, server: subprocess.Popen) -> list[subprocess.Popen]:
    """With --py-spy DIR: sample every server worker during the measured phase (collapsed stacks)."""
    if not args.py_spy:
        return []
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.py_spy.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in worker_pids(server):
        out = args.py_spy / f"{mode}-{pid}.txt"
        cmd = [
            py_spy,
            "record",
            "--gil",
            "-p",
            str(pid),
            "-d",
            str(args.duration),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
        ]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


# ------------------------------------------------------------------------ report


def machine_facts(args) -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in ("granian", "flask", "sqlalchemy", "psycopg", "fhir.resources", "pydantic"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": packages,
        "wrk": wrk_version(args.wrk),
    }


def render(results: dict) -> str:
    p = results["phases"]
    rows = [
        (f"raw SELECT ({p['raw_select'].get('mode', 'psycopg')})", p["raw_select"]),
        ("REST read", p["read"]),
        (f"raw INSERT ({p['raw_insert'].get('mode', 'psycopg')})", p["raw_insert"]),
        ("REST create", p["create"]),
        ("REST update", p["update"]),
    ]
    out = [
        f"{'phase':<24}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
        f"  | CPU ms/req: {'server':>7}{'db':>7}{'client':>7}   other CPU"
    ]
    for name, r in rows:
        line = f"{name:<24}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>7}"
        cpu = r.get("cpu")
        if cpu and r["requests"]:
            per = {
                k: 1000 * cpu[f"{k}_cpu_s"] / r["requests"]
                for k in ("server", "postgres", "client")
            }
            line += (
                f"  | {'':12}{per['server']:>7.2f}{per['postgres']:>7.2f}{per['client']:>7.2f}"
                f"   {cpu['other_cpu_s']:.1f} s of {cpu['wall_s']:.0f} s"
            )
        out.append(line)
    out.append(
        "(CPU ms/req: CPU time of the server processes, of PostgreSQL and of the load generator per request;"
    )
    out.append(
        " other CPU: busy time of anything else on the machine during the phase, should be ~0)"
    )
    out.append("")
    out.append(f"{'ratio':<26}{'value':>8}{'target':>10}  result")
    for r in results["ratios"]:
        target = f">= {r['target']:.2f}" if r["target"] is not None else "-"
        verdict = "met" if r["met"] else ("NOT met" if r["met"] is not None else "(no target)")
        out.append(f"{r['name']:<26}{r['value']:>8.3f}{target:>10}  {verdict}")
    return "\n".join(out)


def ratios(phases: dict) -> list[dict]:
    def ratio(a, b):
        return phases[a]["rps"] / phases[b]["rps"] if phases[b]["rps"] else float("nan")

    out = []
    for name, a, b, target in (
        ("read / raw SELECT", "read", "raw_select", TARGETS["read"]),
        ("create / raw INSERT", "create", "raw_insert", TARGETS["create"]),
        ("update / raw INSERT", "update", "raw_insert", None),
    ):
        value = ratio(a, b)
        out.append(
            {
                "name": name,
                "value": value,
                "target": target,
                "met": None if target is None else value >= target,
            }
        )
    return out


# -------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--database-server",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL URL to create (and afterwards drop) the benchmark database on (default: %(default)s)",
    )
    ap.add_argument(
        "--connections",
        type=int,
        default=8,
        help="concurrent connections, HTTP and raw (default: %(default)s)",
    )
    ap.add_argument(
        "--duration", type=int, default=10, help="seconds measured per phase (default: %(default)s)"
    )
    ap.add_argument(
        "--patients",
        type=int,
        default=10_000,
        help="Patients loaded before measuring (default: %(default)s)",
    )
    ap.add_argument(
        "--warmup",
        type=float,
        default=2,
        help="unmeasured seconds before each phase (default: %(default)s)",
    )
    ap.add_argument(
        "--max-requests",
        type=int,
        default=1_000_000,
        help="upper bound of requests per phase (default: %(default)s)",
    )
    ap.add_argument(
        "--wrk", default=shutil.which("wrk"), help="path of the wrk binary (default: wrk on PATH)"
    )
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default: %(default)s)")
    ap.add_argument(
        "--raw-mode",
        choices=("best", "processes", "threads"),
        default="best",
        help="how the psycopg baseline runs its connections: one process or one thread per "
        "connection, or both and keep the faster (default: %(default)s)",
    )
    ap.add_argument(
        "--server-threads",
        type=int,
        default=None,
        help="--threads passed to fhirserver serve (default: its own)",
    )
    ap.add_argument(
        "--seed", type=int, default=20240601, help="seed of the generated data and random reads"
    )
    ap.add_argument(
        "--startup-timeout",
        type=float,
        default=120,
        help="seconds to wait for the server (default: %(default)s)",
    )
    ap.add_argument(
        "--load-timeout",
        type=float,
        default=900,
        help="seconds allowed for loading (default: %(default)s)",
    )
    ap.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the JSON result goes (default: bench/results)",
    )
    ap.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the server workers with py-spy during the REST phases (figures then include its overhead)",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a target is missed or a request failed",
    )
    args = ap.parse_args(argv)
    if (
        args.connections < 1
        or args.duration < 1
        or args.patients < 1
        or args.max_requests < 1
        or args.wrk_threads < 1
    ):
        ap.error(
            "--connections, --duration, --patients, --max-requests and --wrk-threads must be positive"
        )
    return args


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.wrk or (not Path(args.wrk).exists() and not shutil.which(args.wrk)):
        print(WRK_INSTALL_HINT, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)

    admin_url = pg_url(args.database_server)
    db_name = f"fhirserver_bench_{secrets.token_hex(4)}"
    db_url = with_database(admin_url, db_name)
    workdir = Path(tempfile.mkdtemp(prefix="fhirserver-bench-"))
    server: subprocess.Popen | None = None
    created = False
    started_at = datetime.now(UTC)
    load_at_start = list(os.getloadavg())
    try:
        create_database(admin_url, db_name)
        created = True
        port = free_port()
        log_path = workdir / "server.log"
        print(f"database {db_name}; starting fhirserver serve --workers 2 on {HOST}:{port}")
        server = start_server(db_url, port, log_path, args.server_threads)
        wait_until_ready(server, port, log_path, args.startup_timeout)

        templates = load_templates()
        extra = min(1000, max(100, args.patients // 10))
        patients = make_patients(args.patients + extra, args.seed, templates)
        to_load, for_create = patients[: args.patients], patients[args.patients :]
        print(
            f"loading {len(to_load)} Patients with {args.connections} connections ...", flush=True
        )
        ids, stored, load_seconds = load_patients(
            port, to_load, args.connections, args.load_timeout
        )
        print(
            f"loaded {len(ids)} Patients in {load_seconds:.1f} s ({len(ids) / load_seconds:.0f}/s, Python client)"
        )
        check_read(port, ids[0])

        (workdir / "read.txt").write_text("\n".join(ids) + "\n")
        (workdir / "create.txt").write_text("\n".join(dumps(p) for p in for_create) + "\n")
        update_templates = [update_template(p) for p in for_create[:200]]
        (workdir / "update.txt").write_text(
            "".join(
                f"{id_}\t{update_templates[k % len(update_templates)]}\n"
                for k, id_ in enumerate(ids)
            )
        )
        prepare_raw_tables(db_url, ids, stored)
        insert_bodies = [
            dumps({"resourceType": "Patient", "id": f"raw-{k}", **p})
            for k, p in enumerate(for_create)
        ]

        phases: dict[str, dict] = {}
        plan = (
            ("raw_select", lambda: run_raw("select", db_url, ids, args, server.pid)),
            ("read", lambda: rest_phase(args, port, "read", workdir / "read.txt", server)),
            ("raw_insert", lambda: run_raw("insert", db_url, insert_bodies, args, server.pid)),
            ("create", lambda: rest_phase(args, port, "create", workdir / "create.txt", server)),
            ("update", lambda: rest_phase(args, port, "update", workdir / "update.txt", server)),
        )
        for name, run in plan:
            checkpoint(db_url)
            print(f"phase {name}: {args.warmup:g} s warm-up + {args.duration} s ...", flush=True)
            phases[name] = run()
            if server.poll() is not None:
                raise RuntimeError(f"the server exited during phase {name}:\n{tail(log_path)}")
            r = phases[name]
            cpu = r.get("cpu")
            if cpu and cpu["other_cpu_s"] > 0.1 * cpu["wall_s"]:
                print(
                    f"  warning: other processes used {cpu['other_cpu_s']:.1f} CPU-seconds during "
                    f"this {cpu['wall_s']:.0f} s phase; its figures are disturbed (rerun on a quiet machine)"
                )
            for mode, m in r.get("all_modes", {}).items():
                print(
                    f"  {mode}: {m['rps']:.0f} req/s, p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms"
                )
            print(
                f"  {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, errors {r['errors']}"
            )

        results = {
            "benchmark": "rest",
            "started_at": started_at.isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "settings": {
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "patients": len(ids),
                "max_requests": args.max_requests,
                "wrk_threads": min(args.wrk_threads, args.connections),
                "raw_mode": args.raw_mode,
                "server": "fhirserver serve --workers 2"
                + (f" --threads {args.server_threads}" if args.server_threads else ""),
                "seed": args.seed,
            },
            "machine": machine_facts(args),
            "load_average_at_start": load_at_start,
            "postgresql": database_facts(db_url),
            "load": {
                "patients": len(ids),
                "seconds": load_seconds,
                "per_second": len(ids) / load_seconds,
            },
            "phases": phases,
        }
        results["ratios"] = ratios(phases)
        table = render(results)
        print()
        print(table)
        args.results_dir.mkdir(parents=True, exist_ok=True)
        out = args.results_dir / f"rest-{started_at.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults: {out}")
        failed = any(r["met"] is False for r in results["ratios"]) or any(
            p["errors"] for p in phases.values()
        )
        return 1 if args.check and failed else 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the server and dropping the database", file=sys.stderr)
        return 130
    except Exception:
        if server is not None and server.poll() is None:
            print(f"server log (last lines):\n{tail(workdir / 'server.log')}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            stop_server(server)
        if created:
            try:
                drop_database(admin_url, db_name)
            except psycopg.Error as exc:
                print(f"could not drop database {db_name}: {exc}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
