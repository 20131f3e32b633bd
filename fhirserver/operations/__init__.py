"""Extended operations (http://hl7.org/fhir/R4/operations.html): ``$name`` at system,
type or instance level, each one module here with its OperationDefinition in
``conformance/operations/``. They run through the same request pipeline as the
RESTful interactions (http/dispatch.py), so access control and audit apply.
"""
