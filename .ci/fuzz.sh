#!/usr/bin/env bash
# CI: fuzz the NHS number and date validators and the council CSV reader for
# a bounded time each (CPIS_FUZZ_SECS, default 30), starting from the
# committed seed corpora in fuzz/corpus/.
#
# cargo fuzz needs nightly-only compiler flags (sanitizer coverage). This
# machine has one stable toolchain and cannot fetch another, so the build
# sets RUSTC_BOOTSTRAP=1 to let stable rustc accept them. That is a hack,
# stated openly: it is used for this fuzz build only, never for the product.
# The same validators also have property tests in the normal test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${CPIS_FUZZ_SECS:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
work="$(mktemp -d "${TMPDIR:-/tmp}/cpis-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
for target in nhs_number dates plan_csv; do
  echo "== fuzz $target for ${SECS}s"
  mkdir -p "$work/$target"
  # New inputs go to the scratch directory (first); the committed corpus is read only.
  (cd fuzz && cargo fuzz run "$target" "$work/$target" "corpus/$target" -- \
      -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12)
done
echo "fuzzing: every target ran without a crash"
