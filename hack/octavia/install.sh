#!/usr/bin/env bash
# Create Octavia's own virtualenv (octavia + the plugin's dependencies), once per version:
# ~/.cache/amphora-operator/octavia-<octavia version>/venv (or under $AMPHORA_CACHE_DIR), kept
# while requirements.txt is unchanged, flock-protected (hack/lib/venv.sh). Progress goes to
# stderr; the last line of stdout is the venv path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/venv.sh
source "$here/../lib/venv.sh"
requirements="$here/requirements.txt"
version=$(venv_pin octavia "$requirements")
[ -n "$version" ] || { echo "ERROR: no octavia==X pin in $requirements" >&2; exit 1; }
VENV_LOG_TAG="octavia install" VENV_PYTHON="${OCTAVIA_PYTHON:-python3.11}" \
  venv_install "octavia-$version" "$requirements" \
  'import octavia.controller.worker.v2.tasks.compute_tasks, kubernetes'
