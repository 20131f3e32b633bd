"""Server-owned parts of a resource: its id, meta.versionId and meta.lastUpdated.

http://hl7.org/fhir/R4/resource.html#Meta — the server sets versionId and
lastUpdated on every write; whatever the client sent there is replaced.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime


def new_id() -> str:
    """A fresh logical id: a UUIDv7 (time-ordered, so inserts stay local in B-tree indexes)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def format_instant(moment: datetime) -> str:
    """FHIR ``instant`` in UTC with millisecond precision, e.g. 2024-05-01T10:00:00.123Z."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def stamp(resource: dict, *, resource_id: str, version_id: int, last_updated: datetime) -> dict:
    """A copy of ``resource`` with id and the server's meta, keeping the client's other meta."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    # resourceType, id, meta first: the order the spec's own examples use.
    stamped = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    for key, value in resource.items():
        if key not in stamped:
            stamped[key] = value
    return stamped
