"""Serve a real Keystone on 127.0.0.1 (runs INSIDE the cloud venv: keystone from PyPI).

SQLite database, fernet tokens with a short lifetime (``--token-expiration``, so that a
test run crosses token renewals), bootstrap admin in project ``admin`` with the region
``RegionOne`` and the identity endpoint. Everything else (projects, users, roles, application
credentials, the catalog of the other services) is created by the launcher through the API,
the way an operator of a cloud would.

Prints ``{"port": ..., "seconds": {...}}`` on stdout when Keystone answers, serves until killed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import wsgi_server

CONFIG = """\
[DEFAULT]
debug = false
[database]
connection = sqlite:///{state}/keystone.db
[token]
provider = fernet
expiration = {expiration}
[fernet_tokens]
key_repository = {state}/fernet-keys
[fernet_receipts]
key_repository = {state}/fernet-receipts
[credential]
key_repository = {state}/credential-keys
[identity]
# bcrypt at its lowest cost: the default (12) costs ~0.25 s of CPU per password check.
password_hash_rounds = 4
[cache]
# In process, as every real deployment caches (memcached there). Uncached, each token
# validation costs some twenty SQLite queries: under the full suite's load the validations
# queued for 10-20 s and every Nova request waited on them (seen in the box's stack dumps).
# Keystone invalidates its own cache on revocations and updates, so tests that revoke tokens
# or change passwords see the change at once.
enabled = true
backend = dogpile.cache.memory
"""


MANAGE = """
import json, sys
from keystone.cmd import cli
from keystone.conf import CONF
options = ["--config-file", sys.argv[1]]
first, *others = json.loads(sys.argv[2])
cli.main(argv=["keystone-manage", *options, *first])
for command in others:
    CONF(args=[*options, *command], project="keystone")
    CONF.command.cmd_class.main()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--admin-password", required=True)
    parser.add_argument("--token-expiration", type=int, default=150)
    args = parser.parse_args()
    stdout = wsgi_server.claim_stdout()
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    config = state / "keystone.conf"
    config.write_text(CONFIG.format(state=state, expiration=args.token_expiration))
    user = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
    url = f"http://127.0.0.1:{args.port}/v3"
    commands = [
        ["db_sync"],
        ["fernet_setup", *user],
        ["credential_setup", *user],
        [
            "bootstrap",
            "--bootstrap-password",
            args.admin_password,
            "--bootstrap-region-id",
            "RegionOne",
            "--bootstrap-admin-url",
            url,
            "--bootstrap-internal-url",
            url,
            "--bootstrap-public-url",
            url,
        ],
    ]
    started = time.monotonic()
    # keystone-manage's commands in one process: each run of the CLI costs seconds of imports.
    subprocess.run(
        [sys.executable, "-c", MANAGE, str(config), json.dumps(commands)],
        check=True,
    )
    seconds = {"manage": round(time.monotonic() - started, 2)}

    os.environ["OS_KEYSTONE_CONFIG_FILES"] = str(config)
    sys.argv[1:] = []  # keystone parses the command line as its own options
    started = time.monotonic()
    from keystone.server.wsgi import initialize_public_application

    app = initialize_public_application()
    seconds["load"] = round(time.monotonic() - started, 2)
    wsgi_server.log_to(sys.stderr)
    server = wsgi_server.make("127.0.0.1", args.port, app)
    wsgi_server.serve([server], {"port": args.port, "seconds": seconds}, stdout)


if __name__ == "__main__":
    wsgi_server.run(main)
