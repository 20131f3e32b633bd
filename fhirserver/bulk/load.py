"""Bulk loading: ndjson files and transaction/batch Bundles into the store (``fhirserver load``).

The pipeline, callable without click (``$import`` builds on it):

1. :func:`find_sources` turns paths into :class:`Source` s: ``.ndjson`` (also
   ``.ndjson.gz``) files of one resource per line, split into line-aligned
   chunks so several processes can share a big file, and ``.json`` (also
   ``.json.gz``) files holding a transaction or batch Bundle or one resource;
   folders are searched recursively. Files of the types other resources refer
   to by conditional reference (Organization, Location, Practitioner,
   PractitionerRole, and Synthea's ``hospitalInformation*`` /
   ``practitionerInformation*`` Bundles) come first, in that order.
2. :class:`Loader` reads a source, gives Bundle entries with ``urn:uuid:``
   fullUrls that uuid as id and rewrites references to them
   (http://hl7.org/fhir/R4/bundle.html#references), skips conditional creates
   (``request.ifNoneExist``) that match, resolves conditional references
   (``Practitioner?identifier=...``, http://hl7.org/fhir/R4/references.html#conditional)
   with the server's own search over what is stored and what this load has
   read so far, validates every resource, and writes them in batches through
   :func:`fhirserver.storage.bulk.insert_new` (one database transaction per batch).
3. :func:`run` drives the sources through one Loader, or through a pool of
   worker processes (each with its own connection; forked, on Linux, after
   this process has warmed up the types the files hold), one tier of files
   after the other.

A resource is never updated: a (type, id) that is already stored is left as
it is, which makes loading the same files twice change nothing. For the same
reason a resource without an id gets one derived from its content (a UUIDv5),
not a random one. Invalid resources and unresolvable references are rejected
with their file:line (or ``Bundle.entry[i]``) and the reason; they never stop
the load.
"""

from __future__ import annotations

import gc
import gzip
import multiprocessing
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fhirserver.errors import FhirError
from fhirserver.resources import jsonio
from fhirserver.resources.registry import is_resource_type
from fhirserver.resources.validate import is_valid_id, validate_resource
from fhirserver.search import extract, valuesets
from fhirserver.search.parse import parse
from fhirserver.search.plan import matching_ids
from fhirserver.search.types import SearchContext
from fhirserver.storage.bulk import insert_new
from fhirserver.storage.session import Database, normalize_url

DEFAULT_BATCH_SIZE = 500
#: ndjson files above this size are split into chunks of about this many bytes,
#: so that worker processes can share one big file (a Bulk Data export writes
#: one file per type, and Observation is most of it).
CHUNK_BYTES = 4 * 1024 * 1024

#: Referenced by conditional references of everything else: loaded first, in this order.
_TARGET_TYPES = ("Organization", "Location", "Practitioner", "PractitionerRole")
#: Synthea's shared resources: Organizations (+ Locations) and Practitioners (+ roles).
_SYNTHEA_SHARED = {"hospitalInformation": "Organization", "practitionerInformation": "Practitioner"}
_NDJSON = (".ndjson", ".ndjson.gz")
_JSON = (".json", ".json.gz")
#: ``Type?query``: a conditional reference (absolute URLs with a query are left alone).
_CONDITIONAL = re.compile(r"([A-Z][A-Za-z]{1,63})\?(.+)", re.DOTALL)
_UUID_NAMESPACE = uuid.UUID("5b7d7a44-3d4c-4f57-9b25-6b2a4c0f6e0d")  # ids of id-less resources


class LoadError(Exception):
    """A path that cannot be loaded at all (not a load of bad resources: those are rejected)."""


@dataclass(frozen=True)
class Source:
    """One unit of work: a JSON file, or an ndjson file or a line-aligned byte range of one."""

    path: Path
    #: Load order: reference targets first (0..3), everything else after (4).
    tier: int
    #: Bytes this source covers (progress).
    size: int
    #: Byte range of an uncompressed ndjson chunk; ``end`` None means to the end.
    start: int = 0
    end: int | None = None
    #: Line number of the line at ``start``.
    first_line: int = 1

    @property
    def ndjson(self) -> bool:
        return self.path.name.lower().endswith(_NDJSON)


@dataclass(frozen=True)
class Rejection:
    #: ``file:line`` or ``file:Bundle.entry[i]``.
    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class LoadReport:
    """What a load did. ``read == created + existing + len(rejections)``."""

    files: int = 0
    read: int = 0
    created: int = 0
    #: Already stored (or read earlier in this load), or matched by a conditional create.
    existing: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    #: Files left out because they hold no FHIR resources (e.g. a Bulk Data ``log.ndjson``).
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Processes that did the work.
    workers: int = 1

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    def merge(self, other: LoadReport) -> None:
        self.read += other.read
        self.created += other.created
        self.existing += other.existing
        self.rejections += other.rejections
        self.skipped += other.skipped

    def summary(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.files} files, {self.read} resources read, {self.created} created, "
            f"{self.existing} already present, {self.rejected} rejected "
            f"in {self.seconds:.1f} s ({rate:.0f} resources/s)"
        )


@dataclass(frozen=True)
class Plan:
    sources: list[Source]
    #: Files that hold no FHIR resources, found while planning.
    skipped: list[str]
    files: int

    @property
    def size(self) -> int:
        return sum(source.size for source in self.sources)


class Transactions(Protocol):
    """Where a Loader reads and writes: a :class:`Database` (a transaction per batch), or
    anything else that opens transactions the same way (``$import`` of an upload runs
    inside the request's transaction, a savepoint per batch)."""

    def transaction(self, *, write: bool) -> AbstractContextManager[Any]: ...


class _Rejected(Exception):
    """One resource (or Bundle entry) cannot be loaded; the message says why."""


# --------------------------------------------------------------------------
# Finding the files
# --------------------------------------------------------------------------


def find_sources(paths: Iterable[Path], *, chunk_bytes: int = CHUNK_BYTES) -> Plan:
    """The sources of ``paths`` (files, folders searched recursively), in load order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.name.lower().endswith(_NDJSON + _JSON)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            if not path.name.lower().endswith(_NDJSON + _JSON):
                raise LoadError(f"{path} is not a .ndjson, .ndjson.gz, .json or .json.gz file.")
            files.append(path)
        else:
            raise LoadError(f"{path} does not exist.")
    files = list(dict.fromkeys(files))
    sources: list[Source] = []
    skipped: list[str] = []
    for path in sorted(files, key=_tier):  # stable: the given order within a tier
        if path.name.lower().endswith(_NDJSON):
            if not _holds_resources(path):
                skipped.append(str(path))
                continue
            sources += _ndjson_chunks(path, _tier(path), chunk_bytes)
        else:
            sources.append(Source(path, _tier(path), path.stat().st_size))
    return Plan(sources, skipped, len(files) - len(skipped))


def _tier(path: Path) -> int:
    stem = path.name.split(".", 1)[0]
    for prefix, resource_type in _SYNTHEA_SHARED.items():
        if stem.startswith(prefix):
            stem = resource_type
    return reference_tier(stem)


def reference_tier(resource_type: str | None) -> int:
    """Load order of a type: the types other resources refer to by conditional reference first."""
    return (
        _TARGET_TYPES.index(resource_type) if resource_type in _TARGET_TYPES else len(_TARGET_TYPES)
    )


def _open_ndjson(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _holds_resources(path: Path) -> bool:
    """False when the first record is a JSON object without ``resourceType`` (not FHIR)."""
    with _open_ndjson(path) as f:
        for line in f:
            if line.strip():
                try:
                    first = jsonio.loads(line)
                except ValueError:
                    return True  # a broken line: rejected with its line number later
                return not (isinstance(first, dict) and "resourceType" not in first)
    return True


def _ndjson_chunks(path: Path, tier: int, chunk_bytes: int) -> list[Source]:
    size = path.stat().st_size
    if path.name.lower().endswith(".gz") or size <= chunk_bytes:
        return [Source(path, tier, size)]
    chunks, start, line = [], 0, 1
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + chunk_bytes, size))
            end = min(f.tell() + len(f.readline()), size)  # cut after a newline
            f.seek(start)
            chunks.append(Source(path, tier, end - start, start, end, line))
            line += f.read(end - start).count(b"\n")
            start = end
    return chunks


def _lines(source: Source) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of an ndjson source."""
    with _open_ndjson(source.path) as f:
        f.seek(source.start)
        position = source.start
        for number, line in enumerate(f, source.first_line):
            if source.end is not None and position >= source.end:
                return
            position += len(line)
            yield number, line


# --------------------------------------------------------------------------
# Reading, resolving, validating, writing
# --------------------------------------------------------------------------


class Loader:
    """Loads sources into one database; keeps a batch of validated resources until it is full.

    Call :meth:`flush` at the end (and :meth:`take_report` for what happened).
    """

    def __init__(
        self, database: Transactions, *, base_url: str = "", batch_size: int = DEFAULT_BATCH_SIZE
    ):
        self.database = database
        self.base_url = base_url
        self.batch_size = batch_size
        self.report = LoadReport()
        self._pending: list[tuple[str, dict]] = []
        self._pending_types: set[str] = set()
        #: type -> conditional reference -> ``Type/id``; dropped for a type when
        #: a resource of that type is read (it might match too).
        self._resolved: dict[str, dict[str, str]] = {}

    def take_report(self) -> LoadReport:
        report, self.report = self.report, LoadReport()
        return report

    # -- sources -------------------------------------------------------------

    def load_source(self, source: Source) -> None:
        if source.ndjson:
            self.load_ndjson(_lines(source), str(source.path))
            return
        name = str(source.path)
        raw = source.path.read_bytes()
        if source.path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
        try:
            data = jsonio.loads(raw)
        except ValueError as exc:
            self.report.read += 1
            self._reject(name, f"not valid JSON ({exc})")
            return
        self.load_document(data, name)

    def load_ndjson(
        self, lines: Iterable[tuple[int, bytes]], name: str, *, resource_type: str | None = None
    ) -> None:
        """One resource per line (http://hl7.org/fhir/R4/nd-json.html); blank lines are ignored.

        With ``resource_type`` (the type an ``$import`` input declares), a line
        holding another type is rejected.
        """
        for number, line in lines:
            if not line.strip():
                continue
            self.report.read += 1
            location = f"{name}:{number}"
            try:
                resource = jsonio.loads(line)
            except ValueError as exc:
                self._reject(location, f"not valid JSON ({exc})")
                continue
            found = resource.get("resourceType") if isinstance(resource, dict) else None
            if resource_type is not None and found != resource_type:
                self._reject(
                    location, f"resourceType `{found}` in an input of type {resource_type}"
                )
                continue
            # Only a line with a `?` can hold a conditional reference: skip the walk otherwise.
            self.add(location, resource, references=b"?" in line)

    def load_document(self, data: object, name: str) -> None:
        """A transaction or batch Bundle (its entries are loaded), or one resource."""
        if isinstance(data, dict) and "resourceType" not in data:
            self.report.skipped.append(name)
            return
        if (
            isinstance(data, dict)
            and data.get("resourceType") == "Bundle"
            and data.get("type") in ("transaction", "batch")
        ):
            self._load_bundle(data, name)
            return
        self.report.read += 1
        self.add(name, data)

    def _load_bundle(self, bundle: dict, name: str) -> None:
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            self.report.read += 1
            self._reject(f"{name}:Bundle.entry", "must be an array")
            return
        # First every entry's id, so that references to any fullUrl can be rewritten.
        targets: dict[str, str] = {}
        accepted: list[tuple[str, dict]] = []
        for index, entry in enumerate(entries):
            location = f"{name}:Bundle.entry[{index}]"
            self.report.read += 1
            try:
                resource, target, matched = self._entry(entry)
            except _Rejected as rejected:
                self._reject(location, str(rejected))
                continue
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and full_url:
                targets[full_url] = target
            if matched:
                self.report.existing += 1  # a conditional create that found its resource
            else:
                accepted.append((location, resource))
        for location, resource in accepted:
            self.add(location, resource, targets)

    def _entry(self, entry: object) -> tuple[dict, str, bool]:
        """(resource with its id, ``Type/id`` its fullUrl stands for, matched by ifNoneExist)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            raise _Rejected("the entry has no resource")
        resource = entry["resource"]
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str) or not is_resource_type(resource_type):
            raise _Rejected(f"resourceType `{resource_type}` is not a type this server stores")
        request = entry.get("request")
        if not isinstance(request, dict):
            request = {}
        method = request.get("method", "POST")
        url = request.get("url", resource_type)
        if not isinstance(url, str):
            raise _Rejected("request.url must be a string")
        path, _, query = url.partition("?")
        if method == "PUT":
            url_type, _, url_id = path.partition("/")
            if query:
                raise _Rejected("a conditional update (PUT with a query) is not loaded")
            if url_type != resource_type or not url_id:
                raise _Rejected(f"request.url `{url}` does not name a {resource_type}")
            if resource.get("id", url_id) != url_id:
                raise _Rejected(f"the resource id `{resource['id']}` differs from `{url}`")
            resource["id"] = url_id
        elif method == "POST":
            if path != resource_type:
                raise _Rejected(f"request.url `{url}` is not the type {resource_type}")
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
                # The uuid becomes the id: references to the fullUrl then
                # point at it (a transaction would assign an id instead).
                new_id = full_url.removeprefix("urn:uuid:")
                if not is_valid_id(new_id):
                    raise _Rejected(f"fullUrl `{full_url}` holds no valid uuid")
                resource["id"] = new_id
            condition = request.get("ifNoneExist")
            if condition:
                ids = self._search(resource_type, str(condition))
                if len(ids) > 1:
                    raise _Rejected(
                        f"ifNoneExist `{condition}` matches {len(ids)} {resource_type} resources"
                    )
                if ids:
                    return resource, f"{resource_type}/{ids[0]}", True
        else:
            raise _Rejected(f"request.method `{method}`: only POST and PUT entries are loaded")
        _ensure_id(resource)
        return resource, f"{resource_type}/{resource['id']}", False

    # -- one resource --------------------------------------------------------

    def add(
        self,
        location: str,
        resource: object,
        targets: dict[str, str] | None = None,
        *,
        references: bool = True,
    ) -> None:
        """Resolve the references of one resource, validate it and queue it for writing.

        ``targets`` maps a Bundle's fullUrls to ``Type/id``; ``references=False``
        says the resource holds no reference to rewrite or resolve. Problems
        reject the resource (with ``location``); they never raise.
        """
        try:
            if isinstance(resource, dict):
                _ensure_id(resource)  # before rewriting: the id depends on the file only
                if references or targets:
                    self._rewrite_references(resource, targets or {})
            validate_resource(resource)
        except _Rejected as rejected:
            self._reject(location, str(rejected))
            return
        except FhirError as error:
            self._reject(location, error.message)
            return
        assert isinstance(resource, dict)  # validate_resource made sure
        resource_type = resource["resourceType"]
        self._pending.append((location, resource))
        self._pending_types.add(resource_type)
        self._resolved.pop(resource_type, None)
        if len(self._pending) >= self.batch_size:
            self.flush()

    def _rewrite_references(self, node: object, targets: dict[str, str]) -> None:
        if isinstance(node, dict):
            reference = node.get("reference")
            if isinstance(reference, str):
                if reference in targets:
                    node["reference"] = targets[reference]
                elif "?" in reference:
                    node["reference"] = self._resolve(reference)
            for value in node.values():
                if isinstance(value, dict | list):
                    self._rewrite_references(value, targets)
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, dict | list):
                    self._rewrite_references(item, targets)

    def _resolve(self, reference: str) -> str:
        """``Type/id`` of the one resource a conditional reference matches."""
        match = _CONDITIONAL.fullmatch(reference)
        if match is None or not is_resource_type(match[1]):
            return reference  # not ``Type?query``: not ours to resolve
        resource_type, query = match[1], match[2]
        cache = self._resolved.setdefault(resource_type, {})
        if reference in cache:
            return cache[reference]
        try:
            ids = self._search(resource_type, query)
        except _Rejected as rejected:
            raise _Rejected(f"conditional reference `{reference}`: {rejected}") from None
        if not ids:
            raise _Rejected(
                f"conditional reference `{reference}` is unresolvable: no {resource_type} matches"
            )
        if len(ids) > 1:
            raise _Rejected(
                f"conditional reference `{reference}` is ambiguous: several {resource_type} resources match"
            )
        target = cache[reference] = f"{resource_type}/{ids[0]}"
        return target

    def _search(self, resource_type: str, query: str) -> list[str]:
        """Ids of up to two resources of a type matching a search (stored or read so far)."""
        if resource_type in self._pending_types:
            self.flush()  # what this load has read so far must be searchable
        try:
            search = parse(resource_type, parse_qsl(query, keep_blank_values=True), strict=True)
            if not search.criteria:
                raise _Rejected(f"`{query}` has no search criteria")
            with self.database.transaction(write=False) as conn:
                context = SearchContext(
                    base_url=self.base_url,
                    dialect=conn.dialect.name,
                    value_set_codes=lambda url: valuesets.codes(conn, url),
                )
                statement = matching_ids(resource_type, search.criteria, context).limit(2)
                return [row[0] for row in conn.execute(statement)]
        except FhirError as error:
            raise _Rejected(error.message) from None

    def _reject(self, location: str, reason: str) -> None:
        self.report.rejections.append(Rejection(location, reason))

    # -- writing -------------------------------------------------------------

    def flush(self) -> None:
        """Write the queued resources in one database transaction."""
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._pending_types.clear()
        try:
            self._write(batch)
        except Exception as error:
            if not _is_database_error(error):
                raise
            self._write_one_by_one(batch, error)

    def _write(self, batch: Sequence[tuple[str, dict]]) -> None:
        with self.database.transaction(write=True) as conn:
            result = insert_new(conn, [resource for _, resource in batch], base_url=self.base_url)
        self.report.created += len(result.created)
        # Existing ones, and repeats of a (type, id) within the batch: the first one wins.
        self.report.existing += len(batch) - len(result.created)

    def _write_one_by_one(self, batch: Sequence[tuple[str, dict]], error: Exception) -> None:
        """A batch the database refused: find the resources it refuses, write the rest."""
        failed = []
        for item in batch:
            try:
                self._write([item])
            except Exception as refused:
                if not _is_database_error(refused):
                    raise
                failed.append((item[0], refused))
        if len(failed) == len(batch):
            raise error  # nothing could be written: the database, not the data
        for location, failure in failed:
            cause = getattr(failure, "orig", None) or failure  # the driver's own message
            first_line = (str(cause).splitlines() or [type(cause).__name__])[0]
            self._reject(location, f"the database refused it: {first_line}")


def _ensure_id(resource: dict) -> None:
    """A resource without an id gets one from its content: the same file loads to the same id."""
    if "id" not in resource:
        resource["id"] = str(uuid.uuid5(_UUID_NAMESPACE, jsonio.dumps(resource).decode()))


def _is_database_error(error: Exception) -> bool:
    # Only storage/ and search/ import sqlalchemy; its errors are recognised by their module.
    return type(error).__module__.startswith("sqlalchemy.")


# --------------------------------------------------------------------------
# Running a plan
# --------------------------------------------------------------------------


def run(
    database_url: str,
    plan: Plan,
    *,
    base_url: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    progress: Callable[[int], None] = lambda size: None,
) -> LoadReport:
    """Load every source of ``plan``; ``progress`` is called with the bytes of each source done."""
    started = time.perf_counter()
    report = LoadReport(files=plan.files, skipped=list(plan.skipped))
    if normalize_url(database_url).startswith("sqlite"):
        # SQLite takes one writer at a time, and insert_new extracts the index
        # rows inside the write transaction: a second process only waits for
        # the lock (measured: 2 processes took 1.5x as long as one).
        workers = 1
    report.workers = workers
    if workers <= 1:
        database = Database(database_url, pool_size=1)
        try:
            loader = Loader(database, base_url=base_url, batch_size=batch_size)
            _warm_up(plan, bundles=False)
            with _frozen_heap():
                for source in plan.sources:
                    loader.load_source(source)
                    progress(source.size)
                loader.flush()
            report.merge(loader.take_report())
        finally:
            database.dispose()
    else:
        for part in _run_in_processes(database_url, plan, base_url, batch_size, workers, progress):
            report.merge(part)
    # A JSON file that turned out to hold no resource is not a loaded file.
    report.files = plan.files - (len(report.skipped) - len(plan.skipped))
    report.seconds = time.perf_counter() - started
    return report


def _run_in_processes(
    database_url: str,
    plan: Plan,
    base_url: str,
    batch_size: int,
    workers: int,
    progress: Callable[[int], None],
) -> list[LoadReport]:
    """Each tier of sources shared among ``workers`` processes; a tier is done before the next starts."""
    results: list[LoadReport | None] = [None] * len(plan.sources)
    # fork where it is safe: the workers then start with what this process has
    # imported and warmed up, where each spawned worker imported the models and
    # compiled the expressions again (measured: 1.0 s of CPU per worker, as
    # much as loading 2,500 Synthea resources). The workers open their own
    # database connections; a forked one never uses or closes anything it
    # inherits (a connection of this process included: it ends with os._exit).
    fork = _can_fork()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    if fork:
        _warm_up(plan, bundles=True)
    with (
        _frozen_heap(fork),
        ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(database_url, base_url, batch_size, not fork),
        ) as pool,
    ):
        numbered = list(enumerate(plan.sources))
        for _, tier in groupby(numbered, key=lambda item: item[1].tier):
            futures = {pool.submit(_load_in_worker, source): i for i, source in tier}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                progress(plan.sources[index].size)
    # In source order, so that rejections are listed in file order.
    return [result for result in results if result is not None]


def _can_fork() -> bool:
    # Forking a process that runs other threads can leave their locks held in
    # the child; ProcessPoolExecutor forks its workers before it starts its
    # own thread. Elsewhere than Linux fork is unsafe or missing: spawn there.
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
    )


def _warm_up(plan: Plan, *, bundles: bool) -> None:
    """Validate and index one resource of each type the plan's files hold, and drop the results.

    What the first resource of a type costs — importing its models, building
    their validation plans, compiling its search expressions — is paid here,
    before :func:`_frozen_heap` and before workers are forked, instead of
    during the load (and once instead of in every worker). ndjson files show
    their type on their first line; with ``bundles``, the first JSON file of
    each tier is read for the types of its entries too.
    """
    samples: dict[str, dict] = {}
    seen_paths: set[Path] = set()
    seen_tiers: set[int] = set()
    for source in plan.sources:
        if source.path in seen_paths:
            continue
        seen_paths.add(source.path)
        try:
            if source.ndjson:
                found = [_first_record(source.path)]
            elif bundles and source.tier not in seen_tiers and source.size <= CHUNK_BYTES:
                seen_tiers.add(source.tier)
                data = source.path.read_bytes()
                if source.path.name.lower().endswith(".gz"):
                    data = gzip.decompress(data)
                found = _bundle_resources(jsonio.loads(data))
            else:
                continue
        except Exception:  # noqa: BLE001 - the load itself reports what is wrong with the file
            continue
        for resource in found:
            if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                samples.setdefault(resource["resourceType"], resource)
    for resource in samples.values():
        try:
            validate_resource(resource)
        except FhirError:
            pass  # an invalid first line still warmed most of what its type needs
        try:
            extract.index_rows(resource)
        except Exception:  # noqa: BLE001 - a warm-up must never fail the load
            pass


def _first_record(path: Path) -> object:
    with _open_ndjson(path) as f:
        for line in f:
            if line.strip():
                return jsonio.loads(line)
    return None


def _bundle_resources(data: object) -> list[object]:
    if isinstance(data, dict) and isinstance(data.get("entry"), list):
        return [entry.get("resource") for entry in data["entry"] if isinstance(entry, dict)]
    return [data]


@contextmanager
def _frozen_heap(freeze: bool = True) -> Iterator[None]:
    """Keep the garbage collector's full collections off the objects alive now.

    Those are mostly the models, plans and compiled expressions, which live as
    long as the process; a full collection walked all of them again each time
    (measured on a one-process load of 9,900 Synthea resources: full
    collections took 0.5 s of its 4.2 s of CPU, 0.08 s with this). A forked
    worker inherits the frozen state, and leaves the pages it shares with its
    parent alone. Undone at the end.
    """
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        if freeze:
            gc.unfreeze()


_worker_loader: Loader | None = None


def _start_worker(database_url: str, base_url: str, batch_size: int, freeze: bool) -> None:
    global _worker_loader
    _worker_loader = Loader(
        Database(database_url, pool_size=1), base_url=base_url, batch_size=batch_size
    )
    if freeze:
        gc.freeze()  # a spawned worker's imports; it lives only for this load


def _load_in_worker(source: Source) -> LoadReport:
    # The worker's connection stays open for its next source; it closes when
    # the pool ends the process (an idle connection, so PostgreSQL minds not).
    assert _worker_loader is not None
    _worker_loader.load_source(source)
    _worker_loader.flush()
    return _worker_loader.take_report()
