"""An openstacksdk Connection from a clouds.yaml (path or text) and nothing else.

No environment variables, no default files: the operator passes each profile's clouds.yaml
explicitly. A clouds.yaml is written exactly as a user writes one for the ``openstack`` CLI
(``auth_url``, a password or an application credential, ``region_name``, ``interface``);
every endpoint is then found through Keystone's catalog.

The text of a clouds.yaml holds secrets, so no error raised here quotes it: YAML parser errors
keep only their line and column (:class:`CloudConfigError`). keystoneauth logs whole request
and response bodies at DEBUG; a filter on its loggers blanks ``user_data`` in those lines.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import openstack.connection
import yaml
from openstack.config.loader import OpenStackConfig

__all__ = ["CloudConfigError", "connect", "install_log_redaction"]


class CloudConfigError(ValueError):
    """The clouds.yaml cannot be used; the message never contains the file's text."""


def connect(
    *,
    clouds_yaml: str | None = None,
    clouds_yaml_content: str | None = None,
    cloud: str | None = None,
    **options: Any,
) -> openstack.connection.Connection:
    """An openstacksdk Connection from a clouds.yaml path or text only (no env, no defaults).

    ``options`` override the cloud's settings (e.g. ``compute_api_version``, ``api_timeout``,
    ``timing``). Raises CloudConfigError for a file that cannot be read or used.
    """
    if clouds_yaml is not None:
        config = OpenStackConfig(
            config_files=[clouds_yaml], vendor_files=[], secure_files=[], load_envvars=False
        )
        settings: dict[str, Any] = {"cloud": cloud, **options}
    else:
        config = OpenStackConfig(load_yaml_config=False, load_envvars=False)
        settings = {**_cloud_entry(clouds_yaml_content or "", cloud), **options}
    with warnings.catch_warnings():
        # openstacksdk 4.x warns about InfluxDB on every config, even with no InfluxDB set.
        warnings.filterwarnings("ignore", message="Support for InfluxDB")
        region = config.get_one(**settings)
    return openstack.connection.Connection(config=region)


def _cloud_entry(content: str, cloud: str | None) -> dict[str, Any]:
    """The chosen cloud's settings from clouds.yaml text (one cloud may go unnamed)."""
    try:
        parsed = yaml.safe_load(content) or {}
    except yaml.YAMLError as e:
        raise CloudConfigError(f"clouds.yaml is not valid YAML ({_where(e)})") from None
    clouds = parsed.get("clouds") if isinstance(parsed, dict) else None
    if not isinstance(clouds, dict) or not clouds:
        raise CloudConfigError("clouds.yaml content has no 'clouds' mapping")
    if cloud is None:
        if len(clouds) != 1:
            raise CloudConfigError(f"clouds.yaml has {len(clouds)} clouds; name one with cloud=")
        cloud = next(iter(clouds))
    if cloud not in clouds or not isinstance(clouds[cloud], dict):
        names = ", ".join(str(name) for name in clouds)
        raise CloudConfigError(f"clouds.yaml has no cloud {cloud!r} (has: {names})")
    return dict(clouds[cloud])


def _where(error: yaml.YAMLError) -> str:
    """Line and column of a YAML error, without the snippet of text the parser quotes."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return "position unknown"
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _RedactUserData(logging.Filter):
    """Blank user_data in keystoneauth's DEBUG lines (it logs whole request/response bodies)."""

    PATTERN = re.compile(r'("(?:OS-EXT-SRV-ATTR:)?user_data"\s*:\s*)"[^"]*"')

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()  # only runs for records DEBUG-enabled loggers emit
        if "user_data" in message:
            record.msg, record.args = self.PATTERN.sub(r'\1"<redacted>"', message), None
        return True


_REDACTION = _RedactUserData()
_REDACTED_LOGGERS = (
    "keystoneauth.session",
    "keystoneauth.session.request",
    "keystoneauth.session.response",
    "keystoneauth.session.body",
)


def install_log_redaction() -> None:
    """Attach the user_data filter to keystoneauth's loggers, once."""
    for name in _REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACTION not in logger.filters:
            logger.addFilter(_REDACTION)
