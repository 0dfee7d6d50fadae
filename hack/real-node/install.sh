#!/usr/bin/env bash
# Install what the real kubelet Node needs from Debian: containerd, runc, the CNI plugins and a
# static busybox (the test images' only binary). Idempotent; a no-op when everything is there.
# Needs root (the node itself needs root too); without root it says so and exits 0, so the
# demo falls back to kwok and the test fixture fails with the reason.
set -euo pipefail
packages=(containerd runc containernetworking-plugins busybox-static)
log() { printf '[real-node install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "installed: ${packages[*]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  log "not root: cannot install ${missing[*]}; the real kubelet Node needs root (tests will fail, the demo uses kwok only)"
  exit 0
fi
command -v apt-get >/dev/null || { log "ERROR: no apt-get; install ${missing[*]} by hand"; exit 1; }
log "installing ${missing[*]}"
# Debian's containerd package would start a system containerd; the node runs its own.
export DEBIAN_FRONTEND=noninteractive
# Serialise with other apt users on this machine (dpkg's own lock makes a concurrent run fail).
apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >&2
# The package's service (if any init ran it) is not ours to keep; the node starts its own.
if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl disable --now containerd >&2 || true
fi
log "installed: ${packages[*]}"
