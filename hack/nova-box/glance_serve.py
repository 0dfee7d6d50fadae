"""Serve a real Glance API on 127.0.0.1 (runs INSIDE the cloud venv: glance from PyPI).

SQLite database, a file store, Keystone authentication (``[paste_deploy] flavor = keystone``
with keystonemiddleware validating every token). Images are created by the launcher through
the API. Prints ``{"port": ..., "seconds": {...}}`` on stdout when ready, serves until killed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import wsgi_server

CONFIG = """\
[DEFAULT]
bind_host = 127.0.0.1
bind_port = {port}
worker_self_reference_url = http://127.0.0.1:{port}
enabled_backends = fs:file
enabled_import_methods = []
[database]
connection = sqlite:///{state}/glance.db
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {state}/images
[os_glance_staging_store]
filesystem_store_datadir = {state}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {state}/tasks
[paste_deploy]
flavor = keystone
config_file = {state}/glance-api-paste.ini
[keystone_authtoken]
www_authenticate_uri = {keystone}
auth_url = {keystone}
auth_type = password
username = admin
password = {password}
project_name = admin
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
token_cache_time = 5
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--keystone-url", required=True)
    parser.add_argument("--admin-password", required=True)
    args = parser.parse_args()
    stdout = wsgi_server.claim_stdout()
    state = args.state_dir.resolve()
    for sub in ("images", "staging", "tasks"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    # Bind first: Glance's config must name its own URL.
    server = wsgi_server.make("127.0.0.1", 0, lambda environ, start_response: [])
    port = server.server_port
    config = state / "glance-api.conf"
    config.write_text(
        CONFIG.format(
            port=port, state=state, keystone=args.keystone_url, password=args.admin_password
        )
    )
    etc = Path(sys.prefix) / "etc" / "glance"
    shutil.copy(etc / "glance-api-paste.ini", state / "glance-api-paste.ini")
    seconds: dict[str, float] = {}
    started = time.monotonic()
    manage = str(Path(sys.executable).with_name("glance-manage"))
    subprocess.run([manage, "--config-file", str(config), "db_sync"], check=True, stdout=sys.stderr)
    seconds["db_sync"] = round(time.monotonic() - started, 2)
    started = time.monotonic()
    os.environ["OS_GLANCE_CONFIG_DIR"] = str(state)
    from glance.common import wsgi_app

    server.set_app(wsgi_app.init_app())
    seconds["load"] = round(time.monotonic() - started, 2)
    wsgi_server.log_to(sys.stderr)
    wsgi_server.serve([server], {"port": port, "seconds": seconds}, stdout)


if __name__ == "__main__":
    wsgi_server.run(main)
