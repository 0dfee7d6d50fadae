#!/usr/bin/env bash
# Build the kubelet from the same Go module as the control plane (hack/control-plane/build.sh)
# and cache it beside the other binaries in ~/.cache/amphora-operator/<key>/bin, so the real
# Node runs exactly the Kubernetes version of the apiserver. Run after the control-plane build
# (it creates the module); a flock serialises concurrent builds of the same cache key.
# Prints the kubelet's path on the last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../control-plane/versions.env
source "$here/../control-plane/versions.env"
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
out="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}/$key"
bin="$out/bin"
mod="$out/src/kubernetes"
log() { printf '[kubelet build %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [ -x "$bin/kubelet" ]; then
  log "cached: $bin/kubelet"
  echo "$bin/kubelet"
  exit 0
fi
command -v go >/dev/null || { log "ERROR: Go is required (https://go.dev/dl); none found on PATH"; exit 1; }
# The control-plane build edits the module without this lock: let it finish first.
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  [ -x "$bin/$b" ] || { log "ERROR: $bin/$b missing: run hack/control-plane/build.sh first"; exit 1; }
done

exec 9>"$out/src/kubernetes.lock"
log "waiting for the module lock $out/src/kubernetes.lock"
flock 9
if [ ! -x "$bin/kubelet" ]; then
  cd "$mod"
  export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
  if [ ! -f tools_kubelet.go ]; then
    # The kubelet's packages need go.sum entries the control-plane tools did not; the module
    # graph (and so every version) stays the one k8s.io/kubernetes pins.
    printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubelet"\n' > tools_kubelet.go
    log "adding the kubelet's packages to the module (go mod tidy)"
    go mod tidy >&2
  fi
  log "building kubelet $K8S_VERSION (about a minute warm, several cold on 2 cores)"
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)" -o "$bin/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet
  mv "$bin/kubelet.tmp" "$bin/kubelet"
  log "built $bin/kubelet"
fi
echo "$bin/kubelet"
