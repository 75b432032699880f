#!/usr/bin/env bash
# CI: contract stability. `buf breaking` (the WIRE_JSON rules selected in
# proto/buf.yaml) checks proto/ against
#   - the previous commit (HEAD~1), when the clone has it and it has proto/;
#   - the committed image of the released v1 contract, proto/v1-image.binpb,
#     which a shallow clone without history still has.
# Both run when both exist: HEAD~1 catches a break between two commits, the
# image catches one spread over several commits of a single submission.
#
# Refresh the image only when the contract grows (never to accept a break):
#   buf build proto -o proto/v1-image.binpb
set -euo pipefail
cd "$(dirname "$0")/.."
BUF="${BUF:-/opt/buf/node_modules/.bin/buf}"
IMAGE=proto/v1-image.binpb

checked=0
if git rev-parse --verify -q 'HEAD~1^{commit}' >/dev/null && git cat-file -e 'HEAD~1:proto/buf.yaml' 2>/dev/null; then
  echo "== buf breaking against the previous commit ($(git rev-parse --short HEAD~1))"
  # A git input: the local repository at ref HEAD~1, module in its proto/ subdir.
  "$BUF" breaking proto --against '.git#ref=HEAD~1,subdir=proto'
  checked=$((checked + 1))
else
  echo "== buf breaking: no previous commit with proto/ in this clone (shallow or first commit)"
fi
if [ -f "$IMAGE" ]; then
  echo "== buf breaking against the committed v1 image ($IMAGE)"
  "$BUF" breaking proto --against "$IMAGE"
  checked=$((checked + 1))
fi
if [ "$checked" -eq 0 ]; then
  echo "buf breaking: no baseline (no previous commit and no $IMAGE)" >&2
  exit 1
fi
echo "buf breaking: no wire-incompatible change ($checked baseline(s))"
