"""OpenStack API failures → the spec's exceptions, with reason, retryable and field.

The HTTP status decides through the drivers' one shared table
(:func:`amphora_drivers.exceptions.classify_status`); Nova's own words refine it where Nova
says more than its status does ("No valid host", which field a 400 is about, a 409 about
networks). Transport failures (no connection, timeouts) never have a status. Messages carry
the service's own text, never the request or the credentials.
"""

from __future__ import annotations

import openstack.exceptions
from keystoneauth1 import exceptions as ksa_exceptions

from amphora_drivers.exceptions import (
    AmphoraComputeError,
    InstanceNotFoundError,
    Reason,
    classify_status,
)

__all__ = ["API_ERRORS", "NO_SERVICE", "api_error", "classify"]

#: Everything openstacksdk and keystoneauth raise for a failed API call.
API_ERRORS = (openstack.exceptions.SDKException, ksa_exceptions.ClientException)
#: What openstacksdk raises when the cloud has no usable endpoint for a service at all.
NO_SERVICE = (
    ksa_exceptions.EndpointNotFound,
    openstack.exceptions.EndpointNotFound,
    openstack.exceptions.NotSupported,
)

# The message fragments of Nova's 400s, checked in order, and the field they are about.
_BAD_REQUEST_FIELDS = (
    ("security group", Reason.INVALID_INPUT, "sec_groups"),
    ("availability zone", Reason.INVALID_INPUT, "availability_zone"),
    ("user_data", Reason.INVALID_INPUT, "user_data"),
    ("image", Reason.IMAGE_NOT_FOUND, "image_id"),
    ("flavor", Reason.FLAVOR_NOT_FOUND, "amphora_flavor"),
    ("network", Reason.NETWORK_NOT_FOUND, "network_ids"),
    ("key", Reason.INVALID_KEY, "keys"),
    ("group", Reason.INVALID_INPUT, "server_group"),
    ("tag", Reason.INVALID_INPUT, "tags"),
)


def api_error(
    error: Exception, action: str, cls: type[AmphoraComputeError] = AmphoraComputeError
) -> AmphoraComputeError:
    """Map an openstacksdk/keystoneauth error to the spec's exception (the caller chains it)."""
    reason, retryable, field = classify(error)
    detail = _message(error)
    if reason == Reason.NOT_FOUND and cls is AmphoraComputeError:
        return InstanceNotFoundError(f"{action}: {detail}")
    if reason == Reason.UNAUTHORIZED:
        detail += "; the cloud rejected the credentials of the clouds.yaml (fix them; no retry)"
    prefix = f"{field}: " if field else ""
    return cls(f"{prefix}{action}: {detail}", reason=reason, retryable=retryable, field=field)


def classify(error: Exception) -> tuple[Reason, bool, str | None]:
    """(reason, retryable, field) for an API error."""
    if isinstance(error, ksa_exceptions.ConnectTimeout):
        return Reason.TIMEOUT, True, None
    if isinstance(error, ksa_exceptions.ConnectionError | ksa_exceptions.DiscoveryFailure):
        return Reason.BACKEND_UNAVAILABLE, True, None
    if isinstance(error, ksa_exceptions.Unauthorized):
        return Reason.UNAUTHORIZED, False, None
    status = _status(error)
    message = _message(error).lower()
    if status is None:
        return Reason.UNKNOWN, False, None
    if "no valid host" in message:
        return Reason.NO_VALID_HOST, True, None
    if status == 409 and "network" in message:  # "Multiple possible networks found"
        return Reason.INVALID_INPUT, False, "network_ids"
    if status == 400:
        for fragment, reason, field in _BAD_REQUEST_FIELDS:
            if fragment in message:
                return reason, False, field
    reason, retryable = classify_status(status, message)
    return reason, retryable, None


def _status(error: Exception) -> int | None:
    status = getattr(error, "status_code", None) or getattr(error, "http_status", None)
    return status if isinstance(status, int) else None


def _message(error: Exception) -> str:
    """The service's own words with the HTTP status when the error carries them."""
    details = getattr(error, "details", None)
    status = _status(error)
    if isinstance(details, str) and details and status is not None:
        return f"{_service(error)} answered {status}: {details}"
    return str(error) or type(error).__name__


def _service(error: Exception) -> str:
    """Which API answered, from the request URL's catalog type when openstacksdk knows it."""
    url = str(getattr(error, "url", "") or getattr(error, "request_id", "") or "")
    for fragment, name in (("/v2.0/", "Neutron"), ("/v2/images", "Glance"), ("/v3/", "Keystone")):
        if fragment in url:
            return name
    return "Nova"
