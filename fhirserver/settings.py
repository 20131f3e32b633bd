"""One frozen Settings object; the only module that reads environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

DEFAULT_DATABASE_URL = "sqlite:///fhirserver.db"


@dataclass(frozen=True)
class Settings:
    #: SQLAlchemy URL. ``sqlite:///path`` (embedded default) or
    #: ``postgresql://user@host/db`` (psycopg 3 is used for it).
    database_url: str = DEFAULT_DATABASE_URL
    #: Path prefix of the FHIR base URL, e.g. http://host:8080/fhir.
    base_path: str = "/fhir"
    #: Absolute base URL to put in links and Location headers; when empty, the
    #: request's own scheme and host are used (behind a proxy, set it).
    public_base_url: str = ""
    #: Largest request body accepted (413 above it). Documents of 10 MB travel
    #: as base64 inside JSON, hence the headroom.
    max_body_bytes: int = 20 * 1024 * 1024
    #: PostgreSQL connection pool per server process.
    pool_size: int = 10
    #: Run a bulk data worker thread in every server process (FHIRSERVER_BULK_WORKER=0 turns it off).
    bulk_worker: bool = True
    #: Origins (``scheme://host[:port]``) that ``$import`` may fetch ndjson files from;
    #: empty: import by URL is off (fetching any URL a client names would be SSRF).
    import_allowed_origins: tuple[str, ...] = ()
    #: Largest ndjson file ``$import`` fetches from a URL.
    import_max_bytes: int = 1024 * 1024 * 1024

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        env = os.environ
        settings = cls(
            database_url=env.get("FHIRSERVER_DATABASE_URL", DEFAULT_DATABASE_URL),
            base_path=env.get("FHIRSERVER_BASE_PATH", "/fhir"),
            public_base_url=env.get("FHIRSERVER_PUBLIC_BASE_URL", ""),
            max_body_bytes=int(env.get("FHIRSERVER_MAX_BODY_BYTES", cls.max_body_bytes)),
            pool_size=int(env.get("FHIRSERVER_POOL_SIZE", cls.pool_size)),
            bulk_worker=env.get("FHIRSERVER_BULK_WORKER", "1").strip() != "0",
            import_allowed_origins=tuple(
                origin.strip()
                for origin in env.get("FHIRSERVER_IMPORT_ALLOWED_ORIGINS", "").split(",")
                if origin.strip()
            ),
            import_max_bytes=int(env.get("FHIRSERVER_IMPORT_MAX_BYTES", cls.import_max_bytes)),
        )
        return replace(settings, **overrides)  # type: ignore[arg-type]
