"""Nova ``user_data`` from an amphora's files, keys and user data (cloud-init, within 64 KiB).

Pure functions, no I/O: the driver calls :func:`render_user_data` once in ``validate()`` (so an
oversized request is refused before Nova is called) and once in ``create()``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
from collections.abc import Mapping, Sequence
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any

import yaml

__all__ = ["MERGE_HOW", "NOVA_USER_DATA_LIMIT", "UserDataTooLarge", "render_user_data"]

#: Nova's limit on the base64-encoded ``user_data`` (bytes).
NOVA_USER_DATA_LIMIT = 65535
#: cloud-init merge rules for the driver's part: extend the user's lists and keep their keys.
MERGE_HOW = [
    {"name": "list", "settings": ["append"]},
    {"name": "dict", "settings": ["no_replace", "recurse_list"]},
]
_GZIP_MAGIC = b"\x1f\x8b"


class UserDataTooLarge(ValueError):
    """The rendered user data does not fit Nova's limit even gzipped."""

    def __init__(self, encoded_size: int) -> None:
        super().__init__(
            f"user data would be {encoded_size} bytes of base64 even gzipped; Nova accepts at "
            f"most {NOVA_USER_DATA_LIMIT}"
        )
        self.encoded_size = encoded_size


def render_user_data(
    *, files: Mapping[str, bytes], keys: Sequence[str], user_data: bytes | None
) -> str | None:
    """Return Nova's base64 ``user_data`` carrying the files, keys and user data, or None.

    Raises UserDataTooLarge when the result cannot fit Nova's 65535-byte limit.
    """
    own = _cloud_config(files, keys)
    if own is None:
        document = user_data
    elif user_data is None:
        document = own
    else:
        document = _multipart(user_data, own)
    if document is None:
        return None
    encoded = base64.b64encode(document)
    if len(encoded) > NOVA_USER_DATA_LIMIT:
        encoded = base64.b64encode(gzip.compress(document, mtime=0))
    if len(encoded) > NOVA_USER_DATA_LIMIT:
        raise UserDataTooLarge(len(encoded))
    return encoded.decode("ascii")


def _cloud_config(files: Mapping[str, bytes], keys: Sequence[str]) -> bytes | None:
    """The driver's own cloud-config part, or None when it has nothing to say."""
    if not files and not keys:
        return None
    config: dict[str, Any] = {"merge_how": MERGE_HOW}
    if keys:
        config["ssh_authorized_keys"] = list(keys)
    if files:
        config["write_files"] = [
            {
                "path": path,
                "encoding": "gz+b64",
                "content": base64.b64encode(gzip.compress(content, mtime=0)).decode("ascii"),
                "owner": "root:root",
                "permissions": "0600",
            }
            for path, content in files.items()
        ]
    # A huge width keeps base64 on one line; safe_dump escapes any non-ASCII path.
    text = yaml.safe_dump(config, default_flow_style=False, sort_keys=False, width=1 << 30)
    return b"#cloud-config\n" + text.encode("ascii")


def _multipart(user_data: bytes, own: bytes) -> bytes:
    """Combine the user's data (kept as given) with the driver's cloud-config part."""
    part = MIMEText(own.decode("ascii"), "cloud-config", "us-ascii")
    part.add_header("Content-Disposition", "attachment", filename="amphora-driver.cfg")
    head = user_data.lstrip()[:64].lower()
    if head.startswith((b"content-type: multipart/", b"mime-version:")):
        existing = email.message_from_bytes(user_data, policy=email.policy.compat32)
        if existing.is_multipart():
            existing.attach(part)
            return existing.as_bytes()
    container = MIMEMultipart()
    container.attach(_user_part(user_data))
    container.attach(part)
    return container.as_bytes()


def _user_part(user_data: bytes) -> Message:
    """The user's data as a MIME part that cloud-init types by content, as it would unwrapped."""
    if user_data.startswith(_GZIP_MAGIC):
        return MIMEApplication(user_data, "x-gzip")  # cloud-init gunzips, then sniffs
    try:
        user_data.decode("utf-8")
    except UnicodeDecodeError:
        return MIMEApplication(user_data, "octet-stream")
    # text/plain makes cloud-init sniff the type (#cloud-config, #!, ## template: jinja...);
    # 8bit with surrogate-escaped text makes the generator write the bytes unchanged.
    part = Message()
    part["Content-Type"] = 'text/plain; charset="utf-8"'
    part["Content-Transfer-Encoding"] = "8bit"
    part.set_payload(user_data.decode("ascii", "surrogateescape"))
    return part


# -- images and flavors -----------------------------------------------------------------------
