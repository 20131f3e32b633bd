"""Outside formats -> FHIR: pure functions and data (filled by later issues)."""
