#!/usr/bin/env bash
# Create one of the Nova box's own virtualenvs, once per version:
#   install.sh [nova]   nova + placement + their test fixtures (requirements.txt)
#                       → ~/.cache/amphora-operator/nova-box-<nova version>/venv
#   install.sh cloud    Keystone + Glance (cloud-requirements.txt)
#                       → ~/.cache/amphora-operator/keystone-<v>_glance-<v>/venv
# (or under $AMPHORA_CACHE_DIR). A venv is reused while its requirements file is unchanged
# (sha256 stamp). Concurrent runs wait for each other (flock). Both stay separate from the
# project's .venv: OpenStack services pin many oslo libraries. Progress goes to stderr; the last
# line of stdout is the venv path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
which=${1:-nova}
pin() { sed -n "s/^$1==\([0-9.]*\).*/\1/p" "$requirements"; }
case "$which" in
  nova)
    requirements="$here/requirements.txt"
    name="nova-box-$(pin nova)"
    check='import nova.tests.functional.integrated_helpers, keystonemiddleware.auth_token'
    ;;
  cloud)
    requirements="$here/cloud-requirements.txt"
    name="keystone-$(pin keystone)_glance-$(pin glance)"
    check='import keystone.server.wsgi, glance.common.wsgi_app'
    ;;
  *) echo "usage: $0 [nova|cloud]" >&2; exit 2 ;;
esac
case "$name" in *-|*-_*) echo "ERROR: a version pin is missing in $requirements" >&2; exit 1 ;; esac
cache_root="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}"
home="$cache_root/$name"
venv="$home/venv"
stamp="$venv/.requirements.sha256"
python="${NOVA_BOX_PYTHON:-python3.11}"

log() { printf '[nova-box install %s %(%H:%M:%S)T] %s\n' "$which" -1 "$*" >&2; }

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
log "installing $(grep -cvE '^\s*(#|$)' "$requirements") requirements ($name)"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
if [ "$which" = nova ]; then
  [ -f "$venv/etc/nova/api-paste.ini" ] || { log "ERROR: $venv/etc/nova/api-paste.ini missing"; exit 1; }
fi
OS_NOVA_DISABLE_EVENTLET_PATCHING=1 "$venv/bin/python" -c "$check" >&2
echo "$wanted" > "$stamp"
log "done in $(( $(date +%s) - start )) s"
echo "$venv"
