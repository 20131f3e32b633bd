"""WSGI entry point for production servers: ``fhirserver.wsgi:application``.

Settings come from the environment (``fhirserver serve`` sets them for its workers).
"""

from fhirserver import create_app

application = create_app()
