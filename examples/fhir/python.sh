#!/usr/bin/env bash
# Runs a Python script of the FHIR example with its requirements installed,
# e.g. `examples/fhir/python.sh examples/fhir/validate.py DIR`.
#
# A virtualenv in examples/fhir/.venv; where `python3 -m venv` is unavailable,
# the requirements go into examples/fhir/.deps (pip --target) on PYTHONPATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON="${PYTHON:-python3}"
req="$here/requirements.txt"
pip_flags=(--disable-pip-version-check --no-input -q)

venv="$here/.venv"
deps="$here/.deps"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  py="$venv/bin/python"
elif rm -rf "$venv" && "$PYTHON" -m venv "$venv" >/dev/null 2>&1 \
    && "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "python.sh: created a virtualenv in $venv"
  py="$venv/bin/python"
else
  rm -rf "$venv"
  echo "python.sh: '$PYTHON -m venv' is unavailable; installing the requirements into $deps"
  py="$PYTHON"
fi

if [ "$py" = "$PYTHON" ]; then
  if ! cmp -s "$req" "$deps/.requirements.txt" 2>/dev/null; then
    rm -rf "$deps"
    "$py" -m pip install "${pip_flags[@]}" --target "$deps" -r "$req"
    cp "$req" "$deps/.requirements.txt"
  fi
  export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
else
  "$py" -m pip install "${pip_flags[@]}" -r "$req"
fi

exec "$py" "$@"
