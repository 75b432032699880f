#!/usr/bin/env bash
# CI: conformance with NHS England's CP-IS FHIR guides. The Rust conformance
# tests (tests/e2e/fhir_conformance*.rs) check every answer element for
# element against the guide's examples and keep each body in a directory;
# every kept body is then validated as FHIR R4 with the `fhir.resources` R4B
# models (examples/fhir/validate.py, in the FHIR example's Python
# environment). Fails when a test fails, when a kind of answer was not kept,
# or when any body is not valid FHIR.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# The example's python.sh needs python3 with pip; a bare Debian may lack it.
if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip python3-venv >/dev/null
fi

bodies="$(mktemp -d "${TMPDIR:-/tmp}/cpis-fhir-bodies.XXXXXX")"
trap 'rm -rf "$bodies"' EXIT
echo "== fhir conformance: cargo test --test e2e fhir_conformance (bodies kept in $bodies)"
CPIS_FHIR_BODIES_DIR="$bodies" cargo test --test e2e fhir_conformance
echo "== fhir conformance: every body validated with the fhir.resources R4B models"
examples/fhir/python.sh examples/fhir/validate.py "$bodies" --expect \
  careteam-notifying careteam-silent careteam-empty auditevent-include auditevent auditevent-empty \
  metadata structuredefinition invalid-nhs-number careteam-header no-token wrong-role no-b0107 council \
  unknown-type read-by-id registry-down throttled
