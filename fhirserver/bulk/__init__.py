"""Bulk data in and out of the store: ``fhirserver load`` (load.py), bulk export and import."""
