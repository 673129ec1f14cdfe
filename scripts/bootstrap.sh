#!/usr/bin/env bash
# Create/refresh the project's virtualenv (.venv) with everything: Airflow, MLflow, the API,
# the deep-learning extras, the monitoring and test tools, all pinned by
# requirements/constraints.txt.
#
# Idempotent and fast when nothing changed: a stamp file in the venv records the hash of
# the inputs (pyproject.toml, constraints, this script, the Python version); when it
# matches, nothing is installed.
#
# Env: PYTHON (default python3.11), VENV (default .venv), EXTRAS (default deep,monitoring,test),
#      FORCE=1 to reinstall even when the stamp matches.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-deep,monitoring,test}
TORCH_VERSION=2.13.0
CONSTRAINTS=requirements/constraints.txt
STAMP="$VENV/.bootstrap-stamp"

pick_python() {
    local candidates=("${PYTHON:-}" python3.11 python3)
    for p in "${candidates[@]}"; do
        [ -n "$p" ] || continue
        command -v "$p" >/dev/null 2>&1 || continue
        if "$p" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            echo "$p"; return 0
        fi
    done
    echo "bootstrap: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

inputs_hash() {
    {
        cat pyproject.toml "$CONSTRAINTS" "${BASH_SOURCE[0]}"
        echo "extras=$EXTRAS torch=$TORCH_VERSION"
        "$VENV/bin/python" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "${FORCE:-0}" != 1 ] \
   && [ "$(cat "$STAMP")" = "$(inputs_hash)" ]; then
    echo "env: $VENV is up to date (delete $STAMP or FORCE=1 to reinstall)"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    PY=$(pick_python)
    echo "env: creating $VENV with $PY ($("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV"
fi
# the inputs as they are now: an edit made while pip runs leaves the stamp stale (reinstall next time)
WANT=$(inputs_hash)
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-180}

echo "env: upgrading pip"
"${PIP[@]}" install --quiet --upgrade pip

if [[ ",$EXTRAS," == *",deep,"* ]]; then
    # torch first: the CPU wheel (2.13.0+cpu) from the local find-links (PIP_FIND_LINKS) is
    # preferred over PyPI's CUDA build; any other version would download gigabytes.
    if "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
        echo "env: torch $TORCH_VERSION already installed"
    else
        echo "env: installing torch==$TORCH_VERSION (find-links: ${PIP_FIND_LINKS:-none})"
        "${PIP[@]}" install --quiet "torch==$TORCH_VERSION"
    fi
fi

echo "env: installing the project with extras [$EXTRAS] under $CONSTRAINTS"
"${PIP[@]}" install --quiet -c "$CONSTRAINTS" -e ".[$EXTRAS]"

if ! "${PIP[@]}" check; then
    echo "env: WARNING: pip check reports conflicts (see above)" >&2
fi
echo "$WANT" > "$STAMP"
echo "env: ready in $(( $(date +%s) - start ))s ($VENV)"
