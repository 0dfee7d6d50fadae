#!/usr/bin/env bash
# Create one of the Nova box's own virtualenvs, once per version:
#   install.sh [nova]   nova + placement + their test fixtures (requirements.txt)
#                       → ~/.cache/amphora-operator/nova-box-<nova version>/venv
#   install.sh cloud    Keystone + Glance (cloud-requirements.txt)
#                       → ~/.cache/amphora-operator/keystone-<v>_glance-<v>/venv
# (or under $AMPHORA_CACHE_DIR), kept while the requirements file is unchanged, flock-protected
# (hack/lib/venv.sh). Both stay separate from the project's .venv: OpenStack services pin many
# oslo libraries. Progress goes to stderr; the last line of stdout is the venv path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib/venv.sh
source "$here/../lib/venv.sh"
which=${1:-nova}
case "$which" in
  nova)
    requirements="$here/requirements.txt"
    name="nova-box-$(venv_pin nova "$requirements")"
    # Nova's paste config must come with the wheel: serve.py loads it from the venv.
    check='import os, sys, nova.tests.functional.integrated_helpers, keystonemiddleware.auth_token
assert os.path.isfile(os.path.join(sys.prefix, "etc/nova/api-paste.ini")), "etc/nova/api-paste.ini missing"'
    ;;
  cloud)
    requirements="$here/cloud-requirements.txt"
    name="keystone-$(venv_pin keystone "$requirements")_glance-$(venv_pin glance "$requirements")"
    check='import keystone.server.wsgi, glance.common.wsgi_app'
    ;;
  *) echo "usage: $0 [nova|cloud]" >&2; exit 2 ;;
esac
case "$name" in *-|*-_*) echo "ERROR: a version pin is missing in $requirements" >&2; exit 1 ;; esac
export OS_NOVA_DISABLE_EVENTLET_PATCHING=1  # importing nova must not monkey-patch the check
VENV_LOG_TAG="nova-box install $which" VENV_PYTHON="${NOVA_BOX_PYTHON:-python3.11}" \
  venv_install "$name" "$requirements" "$check"
