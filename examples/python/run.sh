#!/usr/bin/env bash
# Sets up a Python environment for the example, generates the stubs and runs
# client.py with the arguments given, e.g.
#
#   examples/python/run.sh --state-dir .cpis --port-base 50051
#
# The environment is a virtualenv in examples/python/.venv. Where `python3 -m
# venv` is unavailable (Debian without python3-venv), the requirements are
# installed into examples/python/.deps instead (pip --target, which leaves the
# system's Python untouched) and put on PYTHONPATH.
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
  echo "run.sh: created a virtualenv in $venv"
  py="$venv/bin/python"
else
  rm -rf "$venv"
  echo "run.sh: '$PYTHON -m venv' is unavailable; installing the requirements into $deps"
  py="$PYTHON"
fi

if [ "$py" = "$PYTHON" ]; then
  # Reinstall only when requirements.txt changed since the last install.
  if ! cmp -s "$req" "$deps/.requirements.txt" 2>/dev/null; then
    rm -rf "$deps"
    "$py" -m pip install "${pip_flags[@]}" --target "$deps" -r "$req"
    cp "$req" "$deps/.requirements.txt"
  fi
  export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
else
  "$py" -m pip install "${pip_flags[@]}" -r "$req"
fi

PYTHON="$py" "$here/generate.sh"
# CPIS_PY_SCRIPT picks another script of this folder (CI: stream_end.py).
exec "$py" "$here/${CPIS_PY_SCRIPT:-client.py}" "$@"
