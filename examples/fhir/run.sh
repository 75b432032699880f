#!/usr/bin/env bash
# Sets up a Python environment for the FHIR example (python.sh) and runs
# client.py with the arguments given, e.g.
#
#   examples/fhir/run.sh --state-dir .cpis --port-base 50051 --cpis target/debug/cpis
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/python.sh" "$here/client.py" "$@"
