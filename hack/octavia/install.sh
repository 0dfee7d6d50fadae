#!/usr/bin/env bash
# Create Octavia's own virtualenv (octavia + the plugin's dependencies), once per version.
# The venv lives under ~/.cache/amphora-operator/octavia-<octavia version>/venv (or under
# $AMPHORA_CACHE_DIR) and is reused while requirements.txt is unchanged. Concurrent runs wait for
# each other (flock). Progress goes to stderr; the last line of stdout is the venv path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
requirements="$here/requirements.txt"
octavia_version=$(sed -n 's/^octavia==\([0-9.]*\).*/\1/p' "$requirements")
[ -n "$octavia_version" ] || { echo "ERROR: no octavia==X pin in $requirements" >&2; exit 1; }
cache_root="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}"
home="$cache_root/octavia-$octavia_version"
venv="$home/venv"
stamp="$venv/.requirements.sha256"
python="${OCTAVIA_PYTHON:-python3.11}"

log() { printf '[octavia install %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

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
log "installing $(grep -cvE '^\s*(#|$)' "$requirements") requirements (octavia $octavia_version)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
"$venv/bin/python" -c 'import octavia.controller.worker.v2.tasks.compute_tasks, kubernetes' >&2
echo "$wanted" > "$stamp"
log "done in $(( $(date +%s) - start )) s"
echo "$venv"
