#!/usr/bin/env bash
# CI: the FHIR example (examples/fhir) against a fresh `cpis dev`: a vendor's
# FHIR client (Python, `fhir.resources` R4B models parsing every response)
# runs the national searches over our mutual TLS: notifying read, silent
# read, access history, an invalid NHS number, an unflagged person.
# Exit code: the client's.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="fhir example"
PORT_BASE="${CPIS_FHIR_EXAMPLE_PORT_BASE:-56151}"
# shellcheck source=.ci/dev-lib.sh
. .ci/dev-lib.sh

start_dev "$PORT_BASE"
echo "== fhir example: examples/fhir/run.sh"
rc=0
examples/fhir/run.sh --state-dir "$state" --port-base "$PORT_BASE" --cpis "$BIN" || rc=$?
[ "$rc" -eq 0 ] || show_log
stop_dev
exit "$rc"
