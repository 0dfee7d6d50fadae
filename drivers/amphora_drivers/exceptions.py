"""The exceptions a compute driver raises, as the Compute Driver Interface spec defines them.

Tree (every class carries a machine-readable ``reason`` and a ``retryable`` flag)::

    AmphoraComputeError            catch-all for anything a driver could not do
     ├── AmphoraBuildError         an amphora of the requested type could not be built
     ├── DeleteFailed              an amphora could not be deleted
     ├── InstanceNotFoundError     no instance matches the requested id/name/owner
     └── NotSuspendedError         resume() on an instance that is not suspended

    NotImplementedError (builtin)  the operation or amphora type is not supported

``retryable`` is the terminal/transient split a reconciler needs: a quota or an unreachable
backend may clear by itself (retry with backoff), a bad image or an invalid key will not
(report and wait for the user to change the spec). It is the single rule: callers (and a
driver's own bounded in-place retries) read ``retryable``, never a list of reasons.

Drivers share two helpers so that the same input gives the same answer whatever the backend:
:func:`invalid` (a terminal InvalidInput error about one field) and :func:`classify_status`
(one HTTP status → (reason, retryable) table, for Nova, Glance, Neutron, Keystone and the
Kubernetes API alike).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AmphoraBuildError",
    "AmphoraComputeError",
    "DeleteFailed",
    "InstanceNotFoundError",
    "NotSuspendedError",
    "Reason",
    "classify_status",
    "invalid",
]


class Reason(StrEnum):
    """Machine-readable reasons, shown to users in conditions and metrics labels."""

    INVALID_INPUT = "InvalidInput"
    UNSUPPORTED_TYPE = "UnsupportedType"
    QUOTA_EXCEEDED = "QuotaExceeded"
    NO_VALID_HOST = "NoValidHost"
    IMAGE_NOT_FOUND = "ImageNotFound"
    FLAVOR_NOT_FOUND = "FlavorNotFound"
    NETWORK_NOT_FOUND = "NetworkNotFound"
    INVALID_KEY = "InvalidKey"
    BACKEND_UNAVAILABLE = "BackendUnavailable"
    RATE_LIMITED = "RateLimited"
    TIMEOUT = "Timeout"
    CIRCUIT_OPEN = "CircuitOpen"
    NOT_FOUND = "NotFound"
    NOT_SUSPENDED = "NotSuspended"
    AMBIGUOUS_MATCH = "AmbiguousMatch"
    CONFLICT = "Conflict"
    UNAUTHORIZED = "Unauthorized"
    FORBIDDEN = "Forbidden"
    BUILD_FAILED = "BuildFailed"
    DELETE_FAILED = "DeleteFailed"
    UNKNOWN = "Unknown"


class AmphoraComputeError(Exception):
    """Base of every driver error; also the catch-all when nothing more specific fits."""

    default_reason: Reason = Reason.UNKNOWN
    default_retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | str | None = None,
        retryable: bool | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason: str = str(reason if reason is not None else self.default_reason)
        self.retryable: bool = self.default_retryable if retryable is None else retryable
        #: The input field the error is about (e.g. ``config_drive_files``), when there is one.
        self.field = field

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, reason={self.reason!r}, "
            f"retryable={self.retryable!r})"
        )


class AmphoraBuildError(AmphoraComputeError):
    """An amphora of the requested type could not be built."""

    default_reason = Reason.BUILD_FAILED


class DeleteFailed(AmphoraComputeError):
    """The amphora could not be deleted (it still exists)."""

    default_reason = Reason.DELETE_FAILED


class InstanceNotFoundError(AmphoraComputeError):
    """No instance matches the requested id, name or owner."""

    default_reason = Reason.NOT_FOUND
    default_retryable = False


class NotSuspendedError(AmphoraComputeError):
    """resume() was called on an instance that is not suspended."""

    default_reason = Reason.NOT_SUSPENDED
    default_retryable = False


def invalid(field: str, message: str) -> AmphoraBuildError:
    """A terminal InvalidInput build error about ``field``; the message starts with the field."""
    text = message if message.startswith(f"{field}: ") else f"{field}: {message}"
    return AmphoraBuildError(text, reason=Reason.INVALID_INPUT, retryable=False, field=field)


def classify_status(status: int | None, message: str = "") -> tuple[Reason, bool]:
    """(reason, retryable) for an HTTP answer of any backend API; ``message`` is its text.

    No answer at all (``None`` or 0) is an unavailable backend. A 413 (Nova's over-limit) and
    a 403 that speaks of a quota are a quota (one tenant's, it may clear: never a breaker
    failure); any other 403 and a 401 are terminal until the credentials or grants change.
    """
    quota = "quota" in message.lower()
    if not status:
        return Reason.BACKEND_UNAVAILABLE, True
    if status == 401:
        return Reason.UNAUTHORIZED, False
    if (status == 403 and quota) or status == 413:  # Nova's 413 is an over-limit (quota)
        return Reason.QUOTA_EXCEEDED, True
    if status == 403:
        return Reason.FORBIDDEN, False
    if status == 404:
        return Reason.NOT_FOUND, False
    if status in (408, 504):
        return Reason.TIMEOUT, True
    if status == 409:
        return Reason.CONFLICT, True
    if status in (400, 422):
        return Reason.INVALID_INPUT, False
    if status == 429:
        return Reason.RATE_LIMITED, True
    if status >= 500:
        return Reason.BACKEND_UNAVAILABLE, True
    return Reason.UNKNOWN, False
