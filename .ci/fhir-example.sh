#!/usr/bin/env bash
# CI: the FHIR example (examples/fhir) against a fresh `cpis dev`: a vendor's
# FHIR client written to the national CP-IS guide (Python, `fhir.resources`
# R4B models parsing every response, only the guide's headers) runs the
# national searches over our mutual TLS: notifying reads (header true and
# absent), a silent read, the access history with the PractitionerRoles of
# who looked, the errors with their Spine codes, an unflagged person.
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
