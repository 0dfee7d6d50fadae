"""The driver conformance suite every driver must pass (the spec's "tempest tests").

Use it from a test module::

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        def conformance_target(self) -> ConformanceTarget:
            return ConformanceTarget(driver=MyDriver(...), build_kwargs={"image_id": "..."})

Each test builds with a fresh name and owner and deletes what it built, so the suite can run
against a shared real backend.
"""

from __future__ import annotations

import base64
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)
from amphora_drivers.types import (
    MAX_CONFIG_DRIVE_FILE_BYTES,
    MAX_CONFIG_DRIVE_FILES,
    MAX_TAGS,
    AmphoraState,
    AmphoraType,
)

__all__ = ["ConformanceTarget", "DriverConformance", "make_ssh_public_key", "wait_for"]

T = TypeVar("T")


def make_ssh_public_key(comment: str = "conformance") -> str:
    """A syntactically valid, random ed25519 public key line."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


def wait_for(
    probe: Callable[[], T], until: Callable[[T], bool], *, timeout: float, interval: float = 0.2
) -> T:
    """Call ``probe`` until ``until(result)`` holds; fail with the last result on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if until(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last value: {result!r}")
        time.sleep(interval)


@dataclass
class ConformanceTarget:
    """A driver under test and the inputs that make a valid build on its backend."""

    driver: AmphoraComputeDriver
    #: Keyword arguments for build() that the backend accepts (type, flavor, image, networks).
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Seconds to wait for ACTIVE, SUSPENDED or gone.
    timeout: float = 60.0
    poll_interval: float = 0.2


class DriverConformance:
    """The contract of :class:`AmphoraComputeDriver`, as tests. Provide ``conformance_target``."""

    @pytest.fixture
    def built(self, conformance_target: ConformanceTarget) -> Iterator[tuple[str, str, str]]:
        """Build one amphora; yield (id, name, owner); delete it afterwards."""
        driver = conformance_target.driver
        name, owner = _fresh()
        amphora_id = driver.build(name=name, owner=owner, **conformance_target.build_kwargs)
        try:
            yield amphora_id, name, owner
        finally:
            driver.delete(amphora_id)

    def _wait_state(self, target: ConformanceTarget, amphora_id: str, state: AmphoraState) -> None:
        wait_for(
            lambda: target.driver.status(amphora_id),
            lambda s: s is state,
            timeout=target.timeout,
            interval=target.poll_interval,
        )

    def _wait_gone(self, target: ConformanceTarget, amphora_id: str) -> None:
        wait_for(
            lambda: target.driver.find(amphora_id=amphora_id),
            lambda found: not found,
            timeout=target.timeout,
            interval=target.poll_interval,
        )

    def test_build_reaches_active_and_is_found_by_id_name_and_owner(
        self, conformance_target: ConformanceTarget, built: tuple[str, str, str]
    ) -> None:
        amphora_id, name, owner = built
        driver = conformance_target.driver
        assert driver.status(amphora_id) in {AmphoraState.BUILDING, AmphoraState.ACTIVE}
        self._wait_state(conformance_target, amphora_id, AmphoraState.ACTIVE)
        by_id = driver.get_amphora(amphora_id=amphora_id)
        assert (by_id.id, by_id.name, by_id.owner) == (amphora_id, name, owner)
        assert by_id.state is AmphoraState.ACTIVE
        assert by_id.fault is None
        assert by_id.raw_state
        assert by_id.addresses, "an ACTIVE amphora reports at least one address"
        expected_type = AmphoraType(conformance_target.build_kwargs.get("amphora_type", "VM"))
        assert by_id.amphora_type is expected_type
        assert driver.get_amphora(amphora_name=name).id == amphora_id
        assert driver.get_amphora(owner=owner).id == amphora_id
        assert amphora_id in {i.id for i in driver.find()}

    def test_build_is_idempotent_on_owner(
        self, conformance_target: ConformanceTarget, built: tuple[str, str, str]
    ) -> None:
        amphora_id, name, owner = built
        again = conformance_target.driver.build(
            name=name, owner=owner, **conformance_target.build_kwargs
        )
        assert again == amphora_id
        assert [i.id for i in conformance_target.driver.find(owner=owner)] == [amphora_id]

    def test_find_owners_reports_the_instances_of_each_owner_asked(
        self, conformance_target: ConformanceTarget, built: tuple[str, str, str]
    ) -> None:
        """find_owners() answers many owner lookups at once, exactly as find(owner=) would."""
        amphora_id, _, owner = built
        driver = conformance_target.driver
        name, other = _fresh()
        other_id = driver.build(name=name, owner=other, **conformance_target.build_kwargs)
        try:
            nobody = _fresh()[1]
            found = driver.find_owners([owner, nobody, other])
            assert sorted((i.id, i.owner) for i in found) == sorted(
                [(amphora_id, owner), (other_id, other)]
            )
            assert [(i.id, i.owner) for i in driver.find_owners([other])] == [(other_id, other)]
            assert driver.find_owners([nobody]) == []
        finally:
            driver.delete(other_id)

    def test_suspend_and_resume(
        self, conformance_target: ConformanceTarget, built: tuple[str, str, str]
    ) -> None:
        amphora_id, _, _ = built
        driver = conformance_target.driver
        self._wait_state(conformance_target, amphora_id, AmphoraState.ACTIVE)
        with pytest.raises(NotSuspendedError) as not_suspended:
            driver.resume(amphora_id)
        assert not_suspended.value.reason == Reason.NOT_SUSPENDED
        driver.suspend(amphora_id)
        self._wait_state(conformance_target, amphora_id, AmphoraState.SUSPENDED)
        driver.suspend(amphora_id)  # a no-op on a suspended instance
        driver.resume(amphora_id)
        self._wait_state(conformance_target, amphora_id, AmphoraState.ACTIVE)

    def test_release_drops_the_owner_and_keeps_the_instance(
        self, conformance_target: ConformanceTarget, built: tuple[str, str, str]
    ) -> None:
        """deletionPolicy Orphan: the instance stays, but nothing finds it by owner any more,
        so no garbage collector can take it for an orphan."""
        amphora_id, _, owner = built
        driver = conformance_target.driver
        # Nova refuses tag changes while a server builds (409, retryable): release when ACTIVE.
        self._wait_state(conformance_target, amphora_id, AmphoraState.ACTIVE)
        driver.release(amphora_id)
        assert driver.find(owner=owner) == []
        released = driver.get_amphora(amphora_id=amphora_id)
        assert released.owner is None
        assert released.state not in {AmphoraState.DELETING, AmphoraState.DELETED}
        assert all(i.owner is None for i in driver.find() if i.id == amphora_id)
        driver.release(amphora_id)  # twice: a no-op
        driver.release(str(uuid.uuid4()))  # unknown: a no-op

    def test_delete_is_confirmed_and_idempotent(
        self, conformance_target: ConformanceTarget
    ) -> None:
        driver = conformance_target.driver
        name, owner = _fresh()
        amphora_id = driver.build(name=name, owner=owner, **conformance_target.build_kwargs)
        driver.delete(amphora_id)
        self._wait_gone(conformance_target, amphora_id)
        with pytest.raises(InstanceNotFoundError):
            driver.get_amphora(amphora_id=amphora_id)
        with pytest.raises(InstanceNotFoundError):
            driver.status(amphora_id)
        driver.delete(amphora_id)  # already gone: no error
        with pytest.raises(InstanceNotFoundError):
            driver.resume(amphora_id)

    def test_changes_since_report_builds_and_deletions(
        self, conformance_target: ConformanceTarget
    ) -> None:
        """Drivers that answer changed_since() (else None: pollers ask by id) report an instance
        once it has changed (here: became ACTIVE), and its deletion as DELETED or by no longer
        listing it once gone."""
        driver = conformance_target.driver
        before = datetime.now(UTC) - timedelta(seconds=5)
        name, owner = _fresh()
        amphora_id = driver.build(name=name, owner=owner, **conformance_target.build_kwargs)
        try:
            self._wait_state(conformance_target, amphora_id, AmphoraState.ACTIVE)
            changed = driver.changed_since(before)
            if changed is None:
                assert type(driver).changed_since is AmphoraComputeDriver.changed_since
                return
            assert amphora_id in {i.id for i in changed}
        finally:
            driver.delete(amphora_id)
        self._wait_gone(conformance_target, amphora_id)
        after = {i.id: i for i in driver.changed_since(before) or ()}
        assert amphora_id not in after or after[amphora_id].state is AmphoraState.DELETED

    def test_unknown_instance_is_not_found(self, conformance_target: ConformanceTarget) -> None:
        driver = conformance_target.driver
        missing = str(uuid.uuid4())
        with pytest.raises(InstanceNotFoundError) as err:
            driver.get_amphora(amphora_id=missing)
        assert not err.value.retryable
        with pytest.raises(InstanceNotFoundError):
            driver.get_amphora(owner=_fresh()[1])
        assert driver.find(owner=_fresh()[1]) == []
        with pytest.raises(ValueError, match="exactly one"):
            driver.get_amphora()

    def test_limits_of_the_spec_are_accepted(self, conformance_target: ConformanceTarget) -> None:
        driver = conformance_target.driver
        name, owner = _fresh()
        files = {
            f"/etc/amphora/file{i}.conf": os.urandom(MAX_CONFIG_DRIVE_FILE_BYTES // 2).hex()
            for i in range(MAX_CONFIG_DRIVE_FILES)
        }
        amphora_id = driver.build(
            name=name,
            owner=owner,
            keys=[make_ssh_public_key("a"), make_ssh_public_key("b")],
            config_drive_files=files,
            user_data="#cloud-config\nruncmd: [[true]]\n",
            **conformance_target.build_kwargs,
        )
        try:
            self._wait_state(conformance_target, amphora_id, AmphoraState.ACTIVE)
        finally:
            driver.delete(amphora_id)

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"config_drive_files": {f"/f{i}": "x" for i in range(6)}}, "config_drive_files"),
            ({"config_drive_files": {"/big": "x" * (10 * 1024 + 1)}}, "config_drive_files"),
            ({"config_drive_files": {"etc/relative": "x"}}, "config_drive_files"),
            ({"config_drive_files": {"/etc/../passwd": "x"}}, "config_drive_files"),
            ({"keys": ["ssh-rsa not-base64!"]}, "keys"),
            ({"keys": ["hello world"]}, "keys"),
            ({"amphora_type": "Mainframe"}, "amphora_type"),
            ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, "tags"),
            ({"tags": ["a/b"]}, "tags"),
            ({"user_data": b"x" * (64 * 1024 + 1)}, "user_data"),
        ],
        ids=[
            "six-files",
            "file-over-10KiB",
            "relative-path",
            "dotdot-path",
            "key-not-base64",
            "key-bad-type",
            "unknown-type",
            "too-many-tags",
            "tag-with-slash",
            "user-data-too-big",
        ],
    )
    def test_input_rules_reject_before_anything_is_built(
        self, conformance_target: ConformanceTarget, overrides: dict[str, Any], field: str
    ) -> None:
        driver = conformance_target.driver
        name, owner = _fresh()
        kwargs = {**conformance_target.build_kwargs, **overrides}
        with pytest.raises(AmphoraBuildError) as err:
            driver.build(name=name, owner=owner, **kwargs)
        assert err.value.reason == Reason.INVALID_INPUT
        assert not err.value.retryable
        assert err.value.field is not None and err.value.field.startswith(field)
        assert field in str(err.value)
        assert driver.find(owner=owner) == []

    def test_hw_load_balancer_is_not_implemented(
        self, conformance_target: ConformanceTarget
    ) -> None:
        name, owner = _fresh()
        kwargs = {**conformance_target.build_kwargs, "amphora_type": AmphoraType.HW_LOAD_BALANCER}
        with pytest.raises(NotImplementedError):
            conformance_target.driver.build(name=name, owner=owner, **kwargs)
        assert conformance_target.driver.find(owner=owner) == []

    def test_errors_are_compute_errors_with_reasons(
        self, conformance_target: ConformanceTarget
    ) -> None:
        with pytest.raises(AmphoraComputeError) as err:
            conformance_target.driver.suspend(str(uuid.uuid4()))
        assert err.value.reason == Reason.NOT_FOUND


def _fresh() -> tuple[str, str]:
    """A unique name and owner for one test."""
    token = uuid.uuid4().hex[:12]
    return f"conformance-{token}", str(uuid.uuid4())
