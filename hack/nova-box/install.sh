#!/usr/bin/env bash
# Create the Nova box's own virtualenv (nova + placement + their test fixtures), once per version.
# The venv lives under ~/.cache/amphora-operator/nova-box-<nova version>/venv (or under
# $AMPHORA_CACHE_DIR) and is reused while requirements.txt is unchanged. Concurrent runs wait for
# each other (flock). Progress goes to stderr; the last line of stdout is the venv path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/requirements.txt"
nova_version=$(sed -n 's/^nova==\([0-9.]*\).*/\1/p' "$requirements")
[ -n "$nova_version" ] || { echo "ERROR: no nova==X pin in $requirements" >&2; exit 1; }
cache_root="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}"
home="$cache_root/nova-box-$nova_version"
venv="$home/venv"
stamp="$venv/.requirements.sha256"
python="${NOVA_BOX_PYTHON:-python3.11}"

log() { printf '[nova-box install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
cached() { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -x "$venv/bin/python" ]; }

mkdir -p "$home"
exec 9>"$home/install.lock"
flock 9  # another run may be installing right now: wait for it, then use its venv
if cached; then
  log "cached: $venv"
  echo "$venv"
  exit 0
fi

command -v "$python" >/dev/null || { log "ERROR: $python is required"; exit 1; }
start=$(date +%s)
log "creating $venv with $("$python" --version 2>&1)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >&2
log "installing $(grep -cvE '^\s*(#|$)' "$requirements") requirements (nova $nova_version)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
[ -f "$venv/etc/nova/api-paste.ini" ] || { log "ERROR: $venv/etc/nova/api-paste.ini missing"; exit 1; }
OS_NOVA_DISABLE_EVENTLET_PATCHING=1 "$venv/bin/python" -c 'import nova.tests.functional.integrated_helpers' >&2
echo "$wanted" > "$stamp"
log "done in $(( $(date +%s) - start )) s"
echo "$venv"
