"""Data the server is driven by (R4 definitions, OperationDefinitions, ...).

Read with :func:`load`, which works from a checkout and from an installed wheel.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def load(name: str) -> Any:
    """Parse the JSON file ``name`` of this folder (cached: it is immutable data)."""
    return json.loads(resources.files(__name__).joinpath(name).read_bytes())
