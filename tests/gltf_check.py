"""Shared test helper: run the Khronos glTF validator (node + npm ``gltf-validator``) on a file."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VALIDATOR = REPO / "tests" / "tools" / "validate_gltf.js"


def validate_glb(path) -> dict:
    """Validates ``path`` and asserts it has no error; skips, saying why, when node or the npm package is missing.

    Returns:
        The validator's report (``issues`` + ``info``).
    """
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the Khronos glTF validator runs on node")
    if not (REPO / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("npm package gltf-validator is absent; run `npm ci` at the repository root")
    r = subprocess.run([node, str(VALIDATOR), str(path)], capture_output=True, text=True, timeout=120)
    if r.returncode == 2:
        pytest.skip(f"validator could not run: {r.stderr.strip()}")
    report = json.loads(r.stdout)
    errors = [m for m in report["issues"]["messages"] if m["severity"] == 0]
    assert report["issues"]["numErrors"] == 0, errors
    return report
