"""The spec's exception tree, each error carrying a machine-readable reason and retryability.

A reconciler decides "retry with backoff" or "report and wait for the user" from
``retryable`` alone, and shows ``reason`` in conditions and metric labels, so the defaults
and the values are part of the contract.
"""

from __future__ import annotations

import inspect
import pickle
import re

import pytest
from amphora_drivers import exceptions
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)

#: Kubernetes' rule for a condition's ``reason`` (metav1.Condition).
K8S_CONDITION_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


class TestTree:
    """Exactly the spec's tree: one catch-all base, four specific errors."""

    def test_every_public_exception_is_a_compute_error(self) -> None:
        defined = [
            value
            for name, value in vars(exceptions).items()
            if inspect.isclass(value)
            and issubclass(value, BaseException)
            and value.__module__ == exceptions.__name__
            and not name.startswith("_")
        ]
        assert len(defined) == 5
        for cls in defined:
            assert issubclass(cls, AmphoraComputeError), cls

    def test_exported_names(self) -> None:
        """The tree, plus the two helpers every driver shares (one rule for all drivers)."""
        assert set(exceptions.__all__) == {
            "classify_status",
            "invalid",
            "AmphoraComputeError",
            "AmphoraBuildError",
            "DeleteFailed",
            "InstanceNotFoundError",
            "NotSuspendedError",
            "Reason",
        }
        for name in exceptions.__all__:
            value = getattr(exceptions, name)
            if inspect.isclass(value):
                assert value is Reason or issubclass(value, AmphoraComputeError)
            else:
                assert callable(value), name

    @pytest.mark.parametrize(
        "cls", [AmphoraBuildError, DeleteFailed, InstanceNotFoundError, NotSuspendedError]
    )
    def test_specific_errors_derive_directly_from_the_base(self, cls: type) -> None:
        assert cls.__bases__ == (AmphoraComputeError,)

    def test_base_is_an_ordinary_exception(self) -> None:
        assert AmphoraComputeError.__bases__ == (Exception,)

    def test_not_implemented_stays_the_builtin(self) -> None:
        """The spec: unsupported operations raise the builtin NotImplementedError."""
        assert not issubclass(NotImplementedError, AmphoraComputeError)
        assert not hasattr(exceptions, "NotImplementedError")


class TestDefaults:
    """Each class says by default what its error usually means."""

    @pytest.mark.parametrize(
        ("cls", "reason", "retryable"),
        [
            (AmphoraComputeError, "Unknown", True),
            (AmphoraBuildError, "BuildFailed", True),
            (DeleteFailed, "DeleteFailed", True),
            (InstanceNotFoundError, "NotFound", False),
            (NotSuspendedError, "NotSuspended", False),
        ],
    )
    def test_reason_and_retryable_defaults(
        self, cls: type[AmphoraComputeError], reason: str, retryable: bool
    ) -> None:
        err = cls("message")
        assert (err.reason, err.retryable, err.field) == (reason, retryable, None)
        assert type(err.reason) is str, "reason is a plain string, safe as a label"
        assert err.message == str(err) == "message"

    def test_overrides(self) -> None:
        err = AmphoraBuildError(
            "quota", reason=Reason.QUOTA_EXCEEDED, retryable=False, field="amphora_flavor"
        )
        assert (err.reason, err.retryable, err.field) == ("QuotaExceeded", False, "amphora_flavor")
        assert type(err.reason) is str

    def test_a_driver_specific_reason_string_is_kept(self) -> None:
        assert DeleteFailed("x", reason="VolumeInUse").reason == "VolumeInUse"

    def test_retryable_false_is_not_taken_for_unset(self) -> None:
        assert AmphoraComputeError("x", retryable=False).retryable is False
        assert InstanceNotFoundError("x", retryable=True).retryable is True

    def test_options_are_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            AmphoraComputeError("x", Reason.TIMEOUT)  # type: ignore[misc]

    def test_repr_shows_reason_and_retryable(self) -> None:
        assert repr(InstanceNotFoundError("no amphora")) == (
            "InstanceNotFoundError('no amphora', reason='NotFound', retryable=False)"
        )

    def test_survives_pickling(self) -> None:
        """Errors may cross process boundaries (executors); nothing may be lost."""
        err = AmphoraBuildError("q", reason=Reason.QUOTA_EXCEEDED, retryable=False, field="f")
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is AmphoraBuildError
        restored = (copy.message, copy.reason, copy.retryable, copy.field)
        assert restored == ("q", "QuotaExceeded", False, "f")


class TestReason:
    """Reasons are stable, distinct words usable as Kubernetes condition reasons."""

    def test_values_are_distinct(self) -> None:
        values = [r.value for r in Reason]
        assert len(values) == len(set(values))

    @pytest.mark.parametrize("reason", list(Reason))
    def test_values_are_valid_condition_reasons(self, reason: Reason) -> None:
        assert K8S_CONDITION_REASON.match(reason.value)
        assert reason == reason.value, "a StrEnum compares equal to its value"

    def test_the_reasons_the_core_relies_on_exist(self) -> None:
        for name in ("INVALID_INPUT", "CIRCUIT_OPEN", "AMBIGUOUS_MATCH", "NOT_FOUND", "UNKNOWN"):
            assert name in Reason.__members__
