# Sourced by the CI example scripts: builds the cpis binary and runs a fresh
# `cpis dev` on its own state dir and ports for a client to call, then stops
# it with SIGTERM (it stops its private PostgreSQL itself).
#
# Before sourcing, set NAME (for messages). Then:
#   start_dev PORT_BASE [extra `cpis dev` arguments]   sets $state, $log, $dev_pid
#   stop_dev                                           idempotent; also run on exit
#   show_log                                           the last lines of cpis dev's output
export CARGO_TERM_COLOR=never
START_TIMEOUT="${CPIS_EXAMPLE_START_TIMEOUT:-120}"
BIN="${CARGO_TARGET_DIR:-target}/debug/cpis"

# The examples' run.sh needs python3 with pip (a virtualenv when `venv`
# works, else pip --target); a bare Debian may lack pip.
if ! python3 -m pip --version >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip python3-venv >/dev/null
fi

echo "== $NAME: building cpis"
cargo build --bin cpis

state="$(mktemp -d "${TMPDIR:-/tmp}/cpis-${NAME// /-}.XXXXXX")"
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
      echo "$NAME: cpis dev did not stop within 60 s of SIGTERM; killing it" >&2
      kill -KILL "$dev_pid" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$dev_pid" 2>/dev/null || rc=$?
  echo "$NAME: cpis dev stopped (exit $rc)"
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

start_dev() {
  local port_base="$1"
  shift
  echo "== $NAME: starting cpis dev (state $state, ports $port_base-$((port_base + 3)))"
  "$BIN" dev --state-dir "$state" --port-base "$port_base" "$@" >"$log" 2>&1 &
  dev_pid=$!
  local ready=""
  for _ in $(seq 1 "$START_TIMEOUT"); do
    if grep -q "cpis dev is running" "$log" 2>/dev/null; then
      ready=yes
      break
    fi
    kill -0 "$dev_pid" 2>/dev/null || break
    sleep 1
  done
  if [ -z "$ready" ]; then
    if kill -0 "$dev_pid" 2>/dev/null; then
      echo "$NAME: cpis dev did not report ready within ${START_TIMEOUT} s" >&2
    else
      echo "$NAME: cpis dev exited before it was ready" >&2
    fi
    show_log
    exit 1
  fi
  sed -n '/cpis dev is running/,/^  fhir/p' "$log"
}
