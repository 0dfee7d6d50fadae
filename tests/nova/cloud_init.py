"""Read back what the driver sent as user data: MIME parts and the driver's cloud-config."""

from __future__ import annotations

import base64
import email
import gzip
from email.message import Message
from typing import Any

import yaml

__all__ = ["cloud_config", "mime_parts", "written_files"]


def mime_parts(raw: bytes) -> list[Message]:
    """The parts of a MIME multipart user-data document (fails if it is not one)."""
    document = email.message_from_bytes(raw)
    assert document.is_multipart(), raw[:200]
    parts = document.get_payload()
    assert isinstance(parts, list)
    return [p for p in parts if isinstance(p, Message)]


def cloud_config(part: Message | bytes) -> dict[str, Any]:
    """A cloud-config document (a MIME part or raw bytes), parsed."""
    payload = part.get_payload(decode=True) if isinstance(part, Message) else part
    assert isinstance(payload, bytes) and payload.startswith(b"#cloud-config\n")
    loaded: dict[str, Any] = yaml.safe_load(payload)
    return loaded


def written_files(config: dict[str, Any]) -> dict[str, bytes]:
    """The files of a cloud-config's write_files, decoded (the driver always uses gz+b64)."""
    files = {}
    for entry in config["write_files"]:
        assert entry["encoding"] == "gz+b64"
        assert entry["permissions"] == "0600"
        files[entry["path"]] = gzip.decompress(base64.b64decode(entry["content"]))
    return files
