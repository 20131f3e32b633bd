"""fhirserver: a FHIR R4 health data server.

:func:`create_app` is the application factory; it only wires things together.
"""

from __future__ import annotations

__version__ = "0.1.0"


def create_app(settings=None):
    """A WSGI application serving the FHIR API at ``settings.base_path``."""
    from fhirserver.http.app import build_app
    from fhirserver.http.dispatch import Services
    from fhirserver.settings import Settings
    from fhirserver.storage.session import Database

    settings = settings or Settings.from_env()
    database = Database(settings.database_url, pool_size=settings.pool_size)
    return build_app(Services(settings=settings, database=database))
