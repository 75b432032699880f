#!/usr/bin/env bash
# CI: the FHIR example (examples/fhir) against a fresh `cpis dev`: a vendor's
# FHIR client (Python, `fhir.resources` R4B models parsing every response)
# runs the national searches over our mutual TLS: notifying read, silent
# read, access history, an invalid NHS number, an unflagged person.
#
# Builds the cpis binary, starts `cpis dev` on its own state dir and ports,
# runs examples/fhir/run.sh against it, then stops it with SIGTERM (it stops
# its private PostgreSQL itself). Exit code: the client's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

PORT_BASE="${CPIS_FHIR_EXAMPLE_PORT_BASE:-56151}"
START_TIMEOUT="${CPIS_EXAMPLE_START_TIMEOUT:-120}"
BIN="${CARGO_TARGET_DIR:-target}/debug/cpis"

# run.sh needs python3 with pip (a virtualenv when `venv` works, else pip
# --target); a bare Debian may lack pip.
if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip python3-venv >/dev/null
fi

echo "== fhir example: building cpis"
cargo build --bin cpis

state="$(mktemp -d "${TMPDIR:-/tmp}/cpis-fhir-example.XXXXXX")"
log="$state/cpis-dev.log"
dev_pid=""

stop_dev() {
  [ -n "$dev_pid" ] || return 0
  if kill -0 "$dev_pid" 2>/dev/null; then
    kill -TERM "$dev_pid" 2>/dev/null || true
    # cpis dev drains the services and stops its PostgreSQL cluster: give it time.
    for _ in $(seq 1 60); do
      kill -0 "$dev_pid" 2>/dev/null || break
      sleep 1
    done
    if kill -0 "$dev_pid" 2>/dev/null; then
      echo "fhir example: cpis dev did not stop within 60 s of SIGTERM; killing it" >&2
      kill -KILL "$dev_pid" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$dev_pid" 2>/dev/null || rc=$?
  echo "fhir example: cpis dev stopped (exit $rc)"
  dev_pid=""
}

show_log() {
  echo "---- cpis dev output (last 40 lines) ----" >&2
  tail -n 40 "$log" >&2 || true
  echo "----" >&2
}

cleanup() {
  stop_dev
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== fhir example: starting cpis dev (state $state, ports $PORT_BASE-$((PORT_BASE + 3)))"
"$BIN" dev --state-dir "$state" --port-base "$PORT_BASE" >"$log" 2>&1 &
dev_pid=$!

ready=""
for _ in $(seq 1 "$START_TIMEOUT"); do
  if grep -q "cpis dev is running" "$log" 2>/dev/null; then
    ready=yes
    break
  fi
  if ! kill -0 "$dev_pid" 2>/dev/null; then
    break
  fi
  sleep 1
done
if [ -z "$ready" ]; then
  if kill -0 "$dev_pid" 2>/dev/null; then
    echo "fhir example: cpis dev did not report ready within ${START_TIMEOUT} s" >&2
  else
    echo "fhir example: cpis dev exited before it was ready" >&2
  fi
  show_log
  exit 1
fi
sed -n '/cpis dev is running/,/^  fhir/p' "$log"

echo "== fhir example: examples/fhir/run.sh"
rc=0
examples/fhir/run.sh --state-dir "$state" --port-base "$PORT_BASE" --cpis "$BIN" || rc=$?
[ "$rc" -eq 0 ] || show_log
stop_dev
exit "$rc"
