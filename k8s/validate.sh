#!/usr/bin/env bash
# Validates every manifest under k8s/ offline: no cluster, no network beyond
# PyPI (and Debian's archive, for python3-venv on a bare Debian).
#
#   1. every YAML file parses, with no duplicate keys;
#   2. base, overlays/dev and overlays/prod render: with tools/kustomize_lite.py
#      always, and also with kustomize (or `kubectl kustomize`) when one is
#      installed, in which case the two renderings must be identical;
#   3. every rendered object validates strictly (unknown fields are errors)
#      against the Kubernetes schemas of kubernetes-validate, for Kubernetes
#      1.30 and 1.37; cert-manager objects (custom resources: no schema there)
#      against cert-manager v1's fields and values; then the deployment's own
#      rules (tools/check.py: hardened pods, probes, certificates, draining,
#      migrations, network policies, prod replicas and digests, ...);
#   4. the examples validate the same way;
#   5. checkov (security review) passes on the rendered prod overlay and on
#      the Dockerfile, except for the findings in CHECKOV_SKIP and
#      CHECKOV_DOCKER_SKIP below, each with its reason.
#
# Tools go into a virtualenv (CPIS_K8S_VENV, default ~/.cache/cpis-k8s-venv),
# installed on first use at pinned versions. checkov is skipped, loudly, only
# when it cannot be installed. Exit status: 0 when everything passed.
set -euo pipefail

K8S_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${CPIS_K8S_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cpis-k8s-venv}"
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
PYYAML_VERSION=6.0.2
# The oldest Kubernetes this targets (1.30: PDB unhealthyPodEvictionPolicy and
# topology spread matchLabelKeys on by default) and the newest that
# kubernetes-validate ships.
K8S_VERSIONS=(1.30.0 1.37.0)

# Accepted checkov findings on prod: check id, then why (k8s/README.md lists
# them too). Anything else checkov finds fails the run.
CHECKOV_SKIP=(
  # "Prefer using secrets as files over secrets as environment variables":
  # `cpis` reads DATABASE_URL from its environment only (clap `env`), so the
  # Secret reaches it as an env var; reading it from a mounted file needs a
  # code change (a DATABASE_URL_FILE option).
  CKV_K8S_35
)
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

if [ "$(installed kubernetes-validate)" != "$KUBERNETES_VALIDATE_VERSION" ] || [ -z "$(installed PyYAML)" ]; then
  say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION"
  pip_install "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "PyYAML==$PYYAML_VERSION"
fi
have_checkov=1
if [ "$(installed checkov)" != "$CHECKOV_VERSION" ]; then
  say "installing checkov $CHECKOV_VERSION"
  if ! pip_install "checkov==$CHECKOV_VERSION"; then
    have_checkov=0
  fi
fi

# ---------------------------------------------------------------- 1. lint
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cd "$K8S_DIR"
mapfile -t yaml_files < <(find . -name '*.yaml' -not -path './tools/*' | sort)
say "1. YAML syntax (${#yaml_files[@]} files)"
"$venv_python" tools/check.py lint "${yaml_files[@]}" || fail=1

# ---------------------------------------------------------------- 2. render
kustomize_cmd=()
if command -v kustomize >/dev/null 2>&1; then
  kustomize_cmd=(kustomize build)
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  kustomize_cmd=(kubectl kustomize)
fi
if [ ${#kustomize_cmd[@]} -gt 0 ]; then
  say "2. render (tools/kustomize_lite.py, and ${kustomize_cmd[*]} to compare)"
else
  say "2. render (tools/kustomize_lite.py; no kustomize or kubectl here to compare with)"
fi
targets=(base overlays/dev overlays/prod)
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  if ! "$venv_python" tools/kustomize_lite.py "$target" >"$out/$name.yaml"; then
    echo "  ERROR kustomize_lite could not render $target"
    fail=1
    continue
  fi
  if [ ${#kustomize_cmd[@]} -gt 0 ]; then
    if "${kustomize_cmd[@]}" "$target" >"$out/$name.kustomize.yaml"; then
      echo "  $target: kustomize_lite and ${kustomize_cmd[*]}:"
      "$venv_python" tools/check.py compare "$out/$name.yaml" "$out/$name.kustomize.yaml" || fail=1
    else
      echo "  ERROR ${kustomize_cmd[*]} $target failed"
      fail=1
    fi
  else
    echo "  $target: $(grep -c '^kind:' "$out/$name.yaml") objects"
  fi
done

# ---------------------------------------------------------------- 3. schemas and rules
say "3. schemas (strict) and deployment rules"
versions=()
for v in "${K8S_VERSIONS[@]}"; do versions+=(--k8s-version "$v"); done
for target in "${targets[@]}"; do
  name="$(basename "$target")"
  [ -s "$out/$name.yaml" ] || continue
  "$venv_python" tools/check.py validate --profile "$name" "${versions[@]}" "$out/$name.yaml" || fail=1
done

# ---------------------------------------------------------------- 4. examples
say "4. examples"
for example in examples/*.yaml; do
  printf '  %s\n' "$example"
  "$venv_python" tools/check.py validate --profile examples "${versions[@]}" "$example" | sed 's/^/  /' || fail=1
done

# ---------------------------------------------------------------- 5. checkov
# run_checkov LABEL FILE FRAMEWORK SKIP...: fails the run on any finding not
# skipped. --skip-download: offline (no Prisma Cloud guidelines or policies).
run_checkov() {
  local label="$1" file="$2" framework="$3"
  shift 3
  local skip
  skip="$(IFS=,; echo "$*")"
  if "$VENV/bin/checkov" -f "$file" --framework "$framework" --compact --quiet \
    --skip-download --skip-check "$skip" >"$out/checkov.txt" 2>"$out/checkov.err"; then
    echo "  $label: $(grep -m1 '^Passed checks' "$out/checkov.txt"); accepted (skipped): $skip"
  else
    echo "  $label:"
    grep -v '^\s*$' "$out/checkov.txt" | sed 's/^/    /'
    tail -n 5 "$out/checkov.err" | sed 's/^/    /'
    echo "  ERROR checkov: fix these, or accept one in validate.sh's skip lists with its reason"
    fail=1
  fi
}
say "5. checkov $CHECKOV_VERSION security review"
if [ "$have_checkov" = 1 ]; then
  if [ -s "$out/prod.yaml" ]; then
    run_checkov "rendered prod overlay" "$out/prod.yaml" kubernetes "${CHECKOV_SKIP[@]}"
  fi
  run_checkov "Dockerfile" "$K8S_DIR/../Dockerfile" dockerfile "${CHECKOV_DOCKER_SKIP[@]}"
else
  echo "  SKIPPED: checkov $CHECKOV_VERSION could not be installed here"
fi

if [ "$fail" != 0 ]; then
  say "k8s/validate.sh: FAILED"
  exit 1
fi
say "k8s/validate.sh: every manifest is valid"
