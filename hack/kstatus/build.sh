#!/usr/bin/env bash
# Build hack/kstatus/main.go against sigs.k8s.io/cli-utils (the kstatus library Flux, kpt and
# cli-utils appliers use) into ~/.cache/amphora-operator/kstatus-<version>/bin/kstatus.
# Same Go-module approach as hack/control-plane/build.sh: a throwaway module in the cache
# requires the pinned version; only a version change or an edit of main.go rebuilds.
# flock-protected, so parallel test sessions wait for one build instead of racing.
# Prints the binary's path on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CLI_UTILS_VERSION=v0.37.2
cache_root="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}"
out="$cache_root/kstatus-$CLI_UTILS_VERSION"
binary="$out/bin/kstatus"

log() { printf '[kstatus build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$out/bin" "$out/src"
exec 9>"$out/build.lock"
flock 9

if [ -x "$binary" ] && cmp -s "$here/main.go" "$out/src/main.go"; then
  log "cached: $binary"
  echo "$binary"
  exit 0
fi

command -v go >/dev/null || { log "ERROR: Go is required (https://go.dev/dl); none found on PATH"; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
start=$SECONDS
cd "$out/src"
cp "$here/main.go" main.go
if [ ! -f go.mod ]; then
  go mod init amphora-operator/kstatus >/dev/null 2>&1
  go mod edit -require="sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION"
fi
log "resolving modules for sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION (go mod tidy)"
go mod tidy >&2
log "building kstatus"
go build -trimpath -ldflags "-s -w" -o "$binary.tmp" .
mv "$binary.tmp" "$binary"
log "built $binary in $((SECONDS - start)) s"
echo "$binary"
