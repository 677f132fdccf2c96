"""docs/api.md is generated from the docstrings; it must match the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_api_reference_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "api_reference.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
