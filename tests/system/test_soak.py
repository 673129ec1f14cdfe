"""benchmarks/soak.py (run by hand, outside CI) at least parses its arguments: bad input is exit 2 with the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_soak_refuses_a_zero_length_run_with_the_reason():
    r = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--minutes", "0"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    assert "--minutes" in r.stderr and "must be > 0" in r.stderr
