#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, etcd and kwok from Go modules.
# Binaries are cached under ~/.cache/amphora-operator/<key>/bin, keyed by the versions in
# versions.env, so only a version change triggers the (10-25 min, 2 cores) cold build.
# Prints the bin directory on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
cache_root="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}"
out="$cache_root/$key"
bin="$out/bin"
wanted=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

log() { printf '[control-plane build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

complete() { for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if complete; then
  log "cached: $bin"
  echo "$bin"
  exit 0
fi

# One build per cache key at a time: a second `make test` (another checkout, a CI job) waits
# for the first instead of compiling the same binaries into the same directory. The lock is
# released when this script exits, however it ends.
mkdir -p "$out"
exec 9>"$out/.build.lock"
if ! flock -n 9; then
  log "another build of $key is running; waiting for it to finish"
  flock 9
fi
if complete; then
  log "built meanwhile by another run: $bin"
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { log "ERROR: Go is required (https://go.dev/dl); none found on PATH"; exit 1; }
mkdir -p "$bin" "$out/src"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

build_kubernetes() {
  local mod="$out/src/kubernetes"
  mkdir -p "$mod"
  cd "$mod"
  if [ ! -f go.mod ]; then
    log "resolving k8s.io/kubernetes@$K8S_VERSION and its staging modules"
    go mod init amphora-operator/control-plane-tools >/dev/null 2>&1
    local staging_version="v0.${K8S_VERSION#v1.}"
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    # Every staging module is required at v0.0.0 and replaced in-tree upstream; point them at
    # the published release with the same minor/patch.
    for m in $(grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk '{print $1}' | sort -u); do
      go mod edit -replace="$m=$m@$staging_version"
    done
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
GO
    log "downloading modules (go mod tidy)"
    go mod tidy >&2
  fi
  local cmd missing=()
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$bin/$cmd" ] || missing+=("$cmd")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  # One `go build` for all of them: shared packages compile once and the links run in parallel.
  log "building ${missing[*]} (cold build takes minutes on 2 cores)"
  rm -rf "$out/src/k8s-bin.tmp"
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)" -o "$out/src/k8s-bin.tmp/" "${missing[@]/#/k8s.io/kubernetes/cmd/}"
  for cmd in "${missing[@]}"; do
    mv "$out/src/k8s-bin.tmp/$cmd" "$bin/$cmd"
  done
  rmdir "$out/src/k8s-bin.tmp"
  log "built ${missing[*]}"
}

build_etcd() {
  [ -x "$bin/etcd" ] && return 0
  local mod="$out/src/etcd"
  mkdir -p "$mod"
  cd "$mod"
  if [ ! -f go.mod ]; then
    go mod init amphora-operator/etcd-tools >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    log "downloading etcd modules"
    go mod tidy >&2
  fi
  log "building etcd $ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$bin/etcd.tmp" "$bin/etcd"
  log "built etcd"
}

build_kwok() {
  [ -x "$bin/kwok" ] && return 0
  log "building kwok $KWOK_VERSION"
  GOBIN="$out/src/gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$out/src/gobin/kwok" "$bin/kwok"
  # Stage configs ship inside the module; keep a copy beside the binary.
  local moddir
  moddir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  local kind f
  for kind in node pod; do
    mkdir -p "$out/kwok-stages/$kind"
    for f in "$moddir/kustomize/stage/$kind/fast"/*.yaml; do
      [ "$(basename "$f")" = kustomization.yaml ] || cp "$f" "$out/kwok-stages/$kind/"
    done
  done
  chmod -R u+w "$out/kwok-stages"
  log "built kwok"
}

start=$SECONDS
# Side by side: Go's module and build caches are safe for concurrent use, and a link, mostly
# single-threaded, then leaves the other core to another build.
pids=()
(build_etcd) & pids+=($!)
(build_kwok) & pids+=($!)
(build_kubernetes) & pids+=($!)
failed=0
for pid in "${pids[@]}"; do
  wait "$pid" || failed=1
done
[ "$failed" -eq 0 ] || { log "ERROR: a build failed (its output is above)"; exit 1; }
complete || { log "ERROR: binaries missing after the build in $bin"; exit 1; }
log "all binaries ready in $((SECONDS - start)) s: $bin"
echo "$bin"
