"""``python -m fhirserver`` is the ``fhirserver`` command."""

from fhirserver.cli import main

main()
