"""The Docker image's Python dependencies resolve: pip's resolver against the package index (a network
service, so a system test; the rest of the Compose checks, which need none, are tests/unit/test_compose.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_image_requirements_resolve(tmp_path):
    """The Dockerfile's `pip install` (the project's dependencies under its constraint files, plus the
    production extras) resolves, checked with pip's resolver (no Docker engine needed): a stale pin
    in any constraint file fails here rather than in the first image build."""
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    line = re.search(r"RUN pip install ((?:[^\n]*\\\n)*[^\n]*-r /tmp/requirements\.txt[^\n]*)", dockerfile)
    assert line, "the Dockerfile's dependency install step was not found"
    words = line.group(1).replace("\\\n", " ").split()
    constraints = [words[i + 1] for i, w in enumerate(words) if w == "-c"]
    extra = [w.strip('"') for w in words[words.index("/tmp/requirements.txt") + 1 :]]
    assert constraints and all((REPO / c).is_file() for c in constraints), constraints
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = re.search(r"ARG EXTRAS=(\S+)", dockerfile).group(1).split(",")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "\n".join(project["dependencies"] + [d for e in extras for d in project["optional-dependencies"].get(e, [])])
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--quiet",
        "--disable-pip-version-check",
        *[a for c in constraints for a in ("-c", str(REPO / c))],
        "-r",
        str(reqs),
        *extra,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
