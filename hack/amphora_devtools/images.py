"""Test images for the real kubelet Node, written from local files: no registry, no Docker.

Each image is one layer holding a static busybox (from Debian's ``busybox-static``) and a few
scripts, written as a docker-archive tar (``manifest.json``, one config JSON per image, the
layer) that ``ctr images import`` reads. Every image runs as the non-root user 65532, so Pods
pass the ``restricted`` Pod Security level, and every entrypoint exits on SIGTERM (PID 1 ignores
signals it does not handle, which would make each Pod deletion wait its whole grace period).

Images (all ``amphora.local/...``, a registry host that never resolves, so nothing is pulled):

- ``standin:v1`` — the amphora stand-in: serves the amphora agent's health endpoint
  ``GET /1.0/info`` on port 9443 (plain HTTP) and keeps running.
- ``standin:crash`` — prints a line and exits with code 3 (CrashLoopBackOff).
- ``standin:mute`` — runs but never serves (the readiness probe never passes).
- ``pause:v1`` — containerd's sandbox image.

CLI: ``python -m amphora_devtools.images OUT.tar`` writes the archive and prints the tags.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
REGISTRY = "amphora.local"
STANDIN = f"{REGISTRY}/standin:v1"
STANDIN_CRASH = f"{REGISTRY}/standin:crash"
STANDIN_MUTE = f"{REGISTRY}/standin:mute"
PAUSE = f"{REGISTRY}/pause:v1"
#: The amphora agent's port and health path (Octavia's agent API ``/1.0/info``).
AGENT_PORT = 9443
AGENT_HEALTH_PATH = "/1.0/info"
CRASH_EXIT_CODE = 3
USER = 65532

_APPLETS = (
    "sh", "cat", "ls", "stat", "id", "sleep", "httpd", "mkdir", "echo", "kill", "wget",
    "find", "env", "hostname", "ps", "true",
)  # fmt: skip

_STANDIN = f"""#!/bin/sh
# The amphora stand-in: the agent's health endpoint on :{AGENT_PORT}, until SIGTERM.
mkdir -p /tmp/www/1.0
echo '{{"api_version": "1.0", "stand_in": true}}' > /tmp/www{AGENT_HEALTH_PATH}
httpd -f -p {AGENT_PORT} -h /tmp/www &
trap 'kill $!; exit 0' TERM INT
wait
"""

_IDLE = """#!/bin/sh
# Runs and serves nothing, until SIGTERM.
trap 'exit 0' TERM INT
while :; do sleep 1; done
"""

_CRASH = f"""#!/bin/sh
echo "stand-in told to crash: exiting {CRASH_EXIT_CODE}"
exit {CRASH_EXIT_CODE}
"""

_SCRIPTS: Mapping[str, str] = {
    "amphora/standin.sh": _STANDIN,
    "amphora/idle.sh": _IDLE,
    "amphora/crash.sh": _CRASH,
}

#: tag -> the entrypoint script.
IMAGES: Mapping[str, str] = {
    STANDIN: "/amphora/standin.sh",
    STANDIN_CRASH: "/amphora/crash.sh",
    STANDIN_MUTE: "/amphora/idle.sh",
    PAUSE: "/amphora/idle.sh",
}


def _add(
    layer: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    uid: int = 0,
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = info.gid = uid
    info.linkname = link
    info.mtime = 0
    if data is not None:
        info.size = len(data)
    layer.addfile(info, io.BytesIO(data) if data is not None else None)


def _layer(busybox: Path) -> bytes:
    """The one layer: busybox and its applets, the scripts, /tmp, /etc/passwd, a home."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for directory in ("bin", "etc", "amphora", "var", "var/lib"):
            _add(layer, directory, kind=tarfile.DIRTYPE, mode=0o755)
        _add(layer, "tmp", kind=tarfile.DIRTYPE, mode=0o1777)
        _add(layer, "home", kind=tarfile.DIRTYPE, mode=0o755)
        _add(layer, "home/amphora", kind=tarfile.DIRTYPE, mode=0o755, uid=USER)
        _add(layer, "bin/busybox", data=busybox.read_bytes(), mode=0o755)
        for applet in _APPLETS:
            _add(layer, f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
        _add(
            layer,
            "etc/passwd",
            data=f"root:x:0:0:root:/root:/bin/sh\namphora:x:{USER}:{USER}::/home/amphora:/bin/sh\n".encode(),
        )
        _add(layer, "etc/group", data=f"root:x:0:\namphora:x:{USER}:\n".encode())
        for name, script in _SCRIPTS.items():
            _add(layer, name, data=script.encode(), mode=0o755)
    return out.getvalue()


def _config(entrypoint: str, diff_id: str) -> bytes:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": [entrypoint],
            "Env": ["PATH=/bin"],
            "User": f"{USER}:{USER}",
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "amphora_devtools.images", "created": "1970-01-01T00:00:00Z"}],
    }
    return json.dumps(config, sort_keys=True).encode()


def write_archive(path: Path | str, busybox: Path = BUSYBOX) -> list[str]:
    """Write every test image into one docker-archive tar at ``path``; return their tags."""
    if not busybox.is_file():
        raise FileNotFoundError(f"{busybox} missing: install the Debian package busybox-static")
    layer = _layer(busybox)
    digest = hashlib.sha256(layer).hexdigest()
    manifest: list[dict[str, object]] = []
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, f"{digest}/layer.tar", data=layer)
        for tag, entrypoint in IMAGES.items():
            config = _config(entrypoint, f"sha256:{digest}")
            config_name = f"{hashlib.sha256(config).hexdigest()}.json"
            _add(archive, config_name, data=config)
            manifest.append(
                {"Config": config_name, "RepoTags": [tag], "Layers": [f"{digest}/layer.tar"]}
            )
        _add(archive, "manifest.json", data=json.dumps(manifest).encode())
    return list(IMAGES)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m amphora_devtools.images OUT.tar", file=sys.stderr)
        return 2
    for tag in write_archive(args[0]):
        print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
