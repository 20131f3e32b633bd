"""WSGI entry point for production servers: ``fhirserver.wsgi:application``.

Settings come from the environment (``fhirserver serve`` sets them for its workers).
"""

import gc

from fhirserver import create_app
from fhirserver.search import extract
from fhirserver.settings import Settings

settings = Settings.from_env()
application = create_app(settings)
# Compile every type's search expressions now rather than on the first write
# of each type, then take everything built so far (models, compiled
# expressions, registries: ~400,000 objects) out of the garbage collector's
# view. Without the freeze a full collection paused a request for 100-250 ms
# every few hundred requests (docs/PERFORMANCE.md, "Search at scale").
extract.warm_up()
gc.freeze()
if settings.bulk_worker:
    # Every server process runs a bulk data worker thread (jobs are claimed in the database).
    from fhirserver.bulk.worker import start_background

    start_background(settings)
