"""Kubernetes API failures as the driver interface's exceptions, with reason and retryability."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import urllib3
from kubernetes.client.exceptions import ApiException

from amphora_drivers.exceptions import AmphoraBuildError, AmphoraComputeError, Reason

# -- errors ---------------------------------------------------------------------------------


def api_error(e: ApiException, what: str, error: type[AmphoraComputeError]) -> AmphoraComputeError:
    """Translate an API answer into the spec's exceptions, with reason and retryability."""
    detail = e.reason or ""
    with contextlib.suppress(ValueError, TypeError):
        detail = json.loads(e.body or "").get("message", detail)
    message = f"{what}: HTTP {e.status}: {detail}"
    status = e.status or 0
    reason: Reason | str
    if status == 401:
        reason, retryable = Reason.UNAUTHORIZED, False
        message += "; the driver's credentials were rejected"
    elif status == 403 and "exceeded quota" in detail:
        reason, retryable = Reason.QUOTA_EXCEEDED, True
    elif status == 403:
        reason, retryable = Reason.FORBIDDEN, False
        message += "; grant the driver's identity the RBAC rules in the container driver's docs"
    elif status == 404:
        reason, retryable = Reason.NOT_FOUND, False
    elif status == 409:
        reason, retryable = Reason.CONFLICT, True
    elif status in (400, 422):
        reason, retryable = Reason.INVALID_INPUT, False
    elif status == 429:
        reason, retryable = Reason.RATE_LIMITED, True
    elif status == 504:
        reason, retryable = Reason.TIMEOUT, True
    elif status >= 500 or status == 0:
        reason, retryable = Reason.BACKEND_UNAVAILABLE, True
    else:
        reason, retryable = Reason.UNKNOWN, False
    return error(message, reason=reason, retryable=retryable)


@contextlib.contextmanager
def translated(what: str, error: type[AmphoraComputeError]) -> Iterator[None]:
    """Turn API and transport failures inside the block into ``error`` (chained)."""
    try:
        yield
    except ApiException as e:
        raise api_error(e, what, error) from e
    except urllib3.exceptions.HTTPError as e:
        cause = e.reason if isinstance(e, urllib3.exceptions.MaxRetryError) else e
        # NewConnectionError subclasses ConnectTimeoutError in urllib3 2, yet means "refused".
        refused = isinstance(cause, urllib3.exceptions.NewConnectionError)
        if isinstance(cause, urllib3.exceptions.TimeoutError) and not refused:
            raise error(
                f"{what}: the Kubernetes API did not answer in time ({cause})",
                reason=Reason.TIMEOUT,
                retryable=True,
            ) from e
        raise error(
            f"{what}: the Kubernetes API is unreachable ({cause})",
            reason=Reason.BACKEND_UNAVAILABLE,
            retryable=True,
        ) from e


def invalid(field: str, message: str) -> AmphoraBuildError:
    return AmphoraBuildError(
        f"{field}: {message}", reason=Reason.INVALID_INPUT, retryable=False, field=field
    )
