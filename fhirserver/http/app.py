"""The Flask application object (built by fhirserver.create_app)."""

from __future__ import annotations

from flask import Flask

from fhirserver.http.dispatch import Services
from fhirserver.http.routes import blueprint, register_error_handlers


def build_app(services: Services) -> Flask:
    app = Flask("fhirserver")
    # Body size is enforced by http/request.py with a FHIR answer (413 OperationOutcome).
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["fhirserver"] = services
    app.register_blueprint(blueprint(services.settings.base_path))
    register_error_handlers(app)
    return app
