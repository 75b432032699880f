#!/usr/bin/env bash
# CI: the Python client example (examples/python) and `cpis demo` against a
# fresh `cpis dev`:
# proves that a non-Rust gRPC stack interoperates with our mutual TLS, unary
# calls, the Subscribe stream and google.rpc error details.
#
# Runs examples/python/run.sh and `cpis demo` against one `cpis dev`
# (.ci/dev-lib.sh starts and stops it). Exit code: the client's.
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="python example"
PORT_BASE="${CPIS_EXAMPLE_PORT_BASE:-56051}"
# shellcheck source=.ci/dev-lib.sh
. .ci/dev-lib.sh

# A short heartbeat, so the client's first event on its idle stream comes quickly.
start_dev "$PORT_BASE" --heartbeat-secs 2

echo "== python example: examples/python/run.sh"
rc=0
examples/python/run.sh --state-dir "$state" --port-base "$PORT_BASE" --cpis "$BIN" || rc=$?

echo "== cpis demo against the same cpis dev"
demo_rc=0
"$BIN" demo --state-dir "$state" --port-base "$PORT_BASE" || demo_rc=$?
echo "cpis demo: exit $demo_rc"

# The month's reports of what the example and the demo did: Manchester's own
# (CSV) and the national one (JSON), each put together from all three services.
echo "== cpis report (a council's and the national) against the same cpis dev"
report_rc=0
month="$(TZ=Europe/London date +%Y-%m)"
"$BIN" report --state-dir "$state" --port-base "$PORT_BASE" --council E08000003 --from "$month" --to "$month" --csv \
  > "$state/report.csv" || report_rc=$?
cat "$state/report.csv"
if [ "$report_rc" -eq 0 ] && ! grep -q "^E08000003,$month," "$state/report.csv"; then
  echo "cpis report: no row for Manchester this month" >&2
  report_rc=1
fi
"$BIN" report --state-dir "$state" --port-base "$PORT_BASE" --analyst NHSE --from "$month" --to "$month" \
  > "$state/national.json" || report_rc=$?
if [ "$report_rc" -eq 0 ] && ! grep -q '"audience": "national"' "$state/national.json"; then
  echo "cpis report --analyst: not the national report" >&2
  report_rc=1
fi
echo "cpis report: exit $report_rc"
[ "$demo_rc" -ne 0 ] || demo_rc="$report_rc"

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
