#!/usr/bin/env bash
# CI: the Python client example (examples/python) and `cpis demo` against a
# fresh `cpis dev`:
# proves that a non-Rust gRPC stack interoperates with our mutual TLS, unary
# calls, the Subscribe stream and google.rpc error details.
#
# Builds the cpis binary, starts `cpis dev` on its own state dir and ports,
# runs examples/python/run.sh against it, then stops it with SIGTERM (it
# stops its private PostgreSQL itself). Exit code: the client's.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

PORT_BASE="${CPIS_EXAMPLE_PORT_BASE:-56051}"
START_TIMEOUT="${CPIS_EXAMPLE_START_TIMEOUT:-120}"
BIN="${CARGO_TARGET_DIR:-target}/debug/cpis"

# run.sh needs python3 with pip (a virtualenv when `venv` works, else pip
# --target); a bare Debian may lack pip.
if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip python3-venv >/dev/null
fi

echo "== python example: building cpis"
cargo build --bin cpis

state="$(mktemp -d "${TMPDIR:-/tmp}/cpis-python-example.XXXXXX")"
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
      echo "python example: cpis dev did not stop within 60 s of SIGTERM; killing it" >&2
      kill -KILL "$dev_pid" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$dev_pid" 2>/dev/null || rc=$?
  echo "python example: cpis dev stopped (exit $rc)"
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

echo "== python example: starting cpis dev (state $state, ports $PORT_BASE-$((PORT_BASE + 2)))"
# A short heartbeat, so the client's first event on its idle stream comes quickly.
"$BIN" dev --state-dir "$state" --port-base "$PORT_BASE" --heartbeat-secs 2 >"$log" 2>&1 &
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
    echo "python example: cpis dev did not report ready within ${START_TIMEOUT} s" >&2
  else
    echo "python example: cpis dev exited before it was ready" >&2
  fi
  show_log
  exit 1
fi
sed -n '/cpis dev is running/,/^  notification/p' "$log"

echo "== python example: examples/python/run.sh"
rc=0
examples/python/run.sh --state-dir "$state" --port-base "$PORT_BASE" || rc=$?

echo "== cpis demo against the same cpis dev"
demo_rc=0
"$BIN" demo --state-dir "$state" --port-base "$PORT_BASE" || demo_rc=$?
echo "cpis demo: exit $demo_rc"

# A stream the server ends (here: cpis dev stopping) must reach grpcio as
# UNAVAILABLE, never OK: stream_end.py holds Manchester's stream open while
# cpis dev gets SIGTERM.
echo "== python example: a server-ended stream is UNAVAILABLE (stream_end.py)"
ready="$state/stream-ready"
end_rc=0
CPIS_PY_SCRIPT=stream_end.py examples/python/run.sh --state-dir "$state" --port-base "$PORT_BASE" \
  --ready-file "$ready" &
end_pid=$!
for _ in $(seq 1 60); do
  [ -f "$ready" ] && break
  kill -0 "$end_pid" 2>/dev/null || break
  sleep 1
done
if [ -f "$ready" ]; then
  stop_dev
else
  echo "stream_end.py: the stream never delivered a first event" >&2
fi
wait "$end_pid" || end_rc=$?
echo "stream_end.py: exit $end_rc"

if [ "$rc" -ne 0 ] || [ "$demo_rc" -ne 0 ] || [ "$end_rc" -ne 0 ]; then
  show_log
  [ "$rc" -ne 0 ] || rc="$demo_rc"
  [ "$rc" -ne 0 ] || rc="$end_rc"
fi
stop_dev
exit "$rc"
