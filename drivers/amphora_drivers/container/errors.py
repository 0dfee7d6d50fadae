"""Kubernetes API failures as the driver interface's exceptions: the HTTP status is judged by
the one rule all drivers share (``exceptions.classify_status``); this adds the Kubernetes
transport failures and the hints a Kubernetes user needs."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import urllib3
from kubernetes.client.exceptions import ApiException

from amphora_drivers.exceptions import (
    AmphoraComputeError,
    Reason,
    classify_status,
)

# -- errors ---------------------------------------------------------------------------------


def api_error(e: ApiException, what: str, error: type[AmphoraComputeError]) -> AmphoraComputeError:
    """Translate an API answer into the spec's exceptions, with reason and retryability."""
    detail = e.reason or ""
    with contextlib.suppress(ValueError, TypeError):
        detail = json.loads(e.body or "").get("message", detail)
    message = f"{what}: HTTP {e.status}: {detail}"
    reason, retryable = classify_status(e.status, detail)
    if reason is Reason.UNAUTHORIZED:
        message += "; the driver's credentials were rejected"
    elif reason is Reason.FORBIDDEN:
        message += "; grant the driver's identity the RBAC rules in the container driver's docs"
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
