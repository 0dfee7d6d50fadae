# shellcheck shell=bash
# One cached, flock-protected virtualenv per requirements file; sourced by hack/*/install.sh.
#
#   venv_install NAME REQUIREMENTS CHECK
#
# makes ${AMPHORA_CACHE_DIR:-~/.cache/amphora-operator}/NAME/venv from REQUIREMENTS with
# ${VENV_PYTHON:-python3.11}, runs the Python snippet CHECK inside it, and prints the venv's path
# on stdout (progress goes to stderr). NAME carries the pinned versions, so a version change
# installs into a new directory; within one NAME the venv is reused while REQUIREMENTS is
# byte-for-byte unchanged (a sha256 stamp written only after CHECK passed, so an interrupted
# install is redone, never half-used). Concurrent runs of one NAME wait for each other (flock):
# two checkouts or a CI job never install into the same directory at once.

venv_log() { printf '[%s %(%H:%M:%S)T] %s\n' "${VENV_LOG_TAG:-venv}" -1 "$*" >&2; }

# The version pinned as NAME==X in a requirements file ("" when not pinned).
venv_pin() { sed -n "s/^$1==\([0-9.]*\).*/\1/p" "$2"; }

venv_install() {
  local name=$1 requirements=$2 check=$3
  local python=${VENV_PYTHON:-python3.11}
  local home="${AMPHORA_CACHE_DIR:-$HOME/.cache/amphora-operator}/$name"
  local venv="$home/venv"
  local stamp="$venv/.requirements.sha256"
  local wanted
  wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
  mkdir -p "$home"
  # The lock lives as long as this shell: it is released when the install script exits.
  exec 9>"$home/install.lock"
  flock 9  # another run may be installing right now: wait for it, then use its venv
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && [ -x "$venv/bin/python" ]; then
    venv_log "cached: $venv"
    echo "$venv"
    return 0
  fi
  command -v "$python" >/dev/null || { venv_log "ERROR: $python is required"; return 1; }
  local start=$SECONDS
  venv_log "creating $venv with $("$python" --version 2>&1)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  venv_log "installing $(grep -cvE '^\s*(#|$)' "$requirements") requirements ($name)"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2
  "$venv/bin/python" -c "$check" >&2
  echo "$wanted" > "$stamp"
  venv_log "done in $((SECONDS - start)) s"
  echo "$venv"
}
