"""The installed wheel carries the data the server is driven by (not only a checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_conformance_mappings_and_migrations(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("fhirserver-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fhirserver/conformance/r4-resource-types.json" in names
    assert "fhirserver/conformance/compartments/CompartmentDefinition-patient.json" in names
    assert "fhirserver/mappings/__init__.py" in names
    assert "fhirserver/storage/migrations/env.py" in names
    assert "fhirserver/storage/migrations/script.py.mako" in names
    assert any(n.startswith("fhirserver/storage/migrations/versions/0001") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
