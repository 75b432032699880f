#!/usr/bin/env bash
# Generates Python stubs for the cpis v1 contract from ../../proto into ./gen
# (message classes *_pb2.py, type hints *_pb2.pyi, gRPC stubs *_pb2_grpc.py).
#
#   PYTHON=path/to/python ./generate.sh   # the interpreter that has grpcio-tools
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
out="$here/gen"
PYTHON="${PYTHON:-python3}"

rm -rf "$out"
mkdir -p "$out"
mapfile -t files < <(find "$proto/cpis" -name '*.proto' | sort)
# grpc_tools.protoc adds its bundled well-known types (google/protobuf/*.proto)
# to the include path itself.
"$PYTHON" -m grpc_tools.protoc -I "$proto" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "${files[@]}"
echo "generated stubs for ${#files[@]} proto files in $out"
