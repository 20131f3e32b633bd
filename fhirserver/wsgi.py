"""WSGI entry point for production servers: ``fhirserver.wsgi:application``.

Settings come from the environment (``fhirserver serve`` sets them for its workers).
"""

from fhirserver import create_app
from fhirserver.settings import Settings

settings = Settings.from_env()
application = create_app(settings)
if settings.bulk_worker:
    # Every server process runs a bulk data worker thread (jobs are claimed in the database).
    from fhirserver.bulk.worker import start_background

    start_background(settings)
