#!/usr/bin/env bash
# The Go tests: install the third-party gRPC tools that clients/go/tools/go.mod pins, then gofmt, go vet and
# go test in clients/go, against the real daemon (.venv, made by scripts/setup.sh) and the tiny test model.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
command -v go >/dev/null || export PATH=/usr/local/go/bin:$PATH  # where the official Go tarball puts it
[ -x .venv/bin/python ] || bash scripts/setup.sh
export MLXD_PYTHON=${MLXD_PYTHON:-$top/.venv/bin/python}
cd clients/go
# grpcurl, grpc-health-probe, protoc-gen-go and protoc-gen-go-grpc, from the Go module proxy.
GOBIN="$PWD/bin" go -C tools install tool
export PATH="$PWD/bin:$PATH"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt: these files need formatting:" "$unformatted" >&2
  exit 1
fi
go vet ./...
# -count=1: the tests drive the daemon and the Python client, which go test's cache does not see change.
exec go test -count=1 -timeout 5m "$@" ./...
