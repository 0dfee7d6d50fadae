"""The noop driver simulates a slow, failing compute backend exactly as configured.

The operator's non-blocking and retry paths are tested against these simulations, so each
knob (constructor option or per-instance tag hint) must do precisely what it says. Time is a
fake clock: nothing here sleeps to wait for a state.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)
from amphora_drivers.noop import NoopDriver
from amphora_drivers.testing import make_ssh_public_key
from amphora_drivers.types import AmphoraState

from tests.drivers._clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class TestSlowBuild:
    """build_seconds: BUILDING until the time has passed, then ACTIVE."""

    def test_building_until_build_seconds_elapsed(self, clock: FakeClock) -> None:
        driver = NoopDriver(build_seconds=10, clock=clock)
        amphora_id = driver.build(name="amp", owner="o-1")
        assert driver.status(amphora_id) is AmphoraState.BUILDING
        building = driver.get_amphora(amphora_id=amphora_id)
        assert (building.raw_state, building.addresses, building.fault) == ("building", (), None)
        clock.advance(9.99)
        assert driver.status(amphora_id) is AmphoraState.BUILDING
        clock.advance(0.01)
        active = driver.get_amphora(amphora_id=amphora_id)
        assert active.state is AmphoraState.ACTIVE
        assert active.raw_state == "active"
        assert len(active.addresses) == 1 and active.addresses[0].startswith("192.0.2.")

    def test_build_returns_at_once(self, clock: FakeClock) -> None:
        """A slow build is observed through status(); build() itself does not wait."""
        driver = NoopDriver(build_seconds=3600, clock=clock)
        started = time.monotonic()
        driver.build(name="amp")
        assert time.monotonic() - started < 5

    def test_zero_build_seconds_is_active_at_once(self, clock: FakeClock) -> None:
        driver = NoopDriver(clock=clock)
        assert driver.status(driver.build(name="amp")) is AmphoraState.ACTIVE

    def test_addresses_are_stable(self, clock: FakeClock) -> None:
        driver = NoopDriver(clock=clock)
        amphora_id = driver.build(name="amp")
        first = driver.get_amphora(amphora_id=amphora_id).addresses
        assert driver.get_amphora(amphora_id=amphora_id).addresses == first


class TestBuildFault:
    """build_fault: the build ends in ERROR carrying the fault message."""

    def test_fault_is_reported_once_the_build_ends(self, clock: FakeClock) -> None:
        driver = NoopDriver(build_seconds=5, build_fault="No valid host was found", clock=clock)
        amphora_id = driver.build(name="amp", owner="o-1")
        building = driver.get_amphora(amphora_id=amphora_id)
        assert (building.state, building.fault) == (AmphoraState.BUILDING, None)
        clock.advance(5)
        failed = driver.get_amphora(amphora_id=amphora_id)
        assert failed.state is AmphoraState.ERROR
        assert failed.fault == "No valid host was found"
        assert failed.raw_state == "error"
        assert failed.addresses == ()

    def test_an_errored_instance_is_adopted_not_rebuilt(self, clock: FakeClock) -> None:
        """Idempotency holds for ERROR too: the caller decides to delete and rebuild."""
        driver = NoopDriver(build_fault="boom", clock=clock)
        amphora_id = driver.build(name="amp", owner="o-1")
        assert driver.build(name="amp", owner="o-1") == amphora_id

    def test_an_errored_instance_can_be_deleted(self, clock: FakeClock) -> None:
        driver = NoopDriver(build_fault="boom", clock=clock)
        amphora_id = driver.build(name="amp")
        driver.delete(amphora_id)
        assert driver.find(amphora_id=amphora_id) == []


class TestDeleteFailures:
    """delete_failures=k: the first k deletes of each instance raise a retryable DeleteFailed."""

    @pytest.mark.parametrize("backing", ["memory", "file"])
    def test_k_failures_then_success(self, tmp_path: Path, clock: FakeClock, backing: str) -> None:
        state = tmp_path / "noop.json" if backing == "file" else None
        driver = NoopDriver(delete_failures=2, clock=clock, state_file=state)
        amphora_id = driver.build(name="amp")
        for left in (1, 0):
            with pytest.raises(DeleteFailed) as caught:
                driver.delete(amphora_id)
            assert caught.value.retryable is True
            assert caught.value.reason == Reason.DELETE_FAILED
            assert f"({left} left)" in str(caught.value)
            assert driver.status(amphora_id) is AmphoraState.ACTIVE, "a failed delete keeps it"
        driver.delete(amphora_id)
        with pytest.raises(InstanceNotFoundError):
            driver.status(amphora_id)

    def test_failures_are_counted_per_instance(self, clock: FakeClock) -> None:
        driver = NoopDriver(delete_failures=1, clock=clock)
        first, second = driver.build(name="one"), driver.build(name="two")
        with pytest.raises(DeleteFailed):
            driver.delete(first)
        driver.delete(first)
        with pytest.raises(DeleteFailed):
            driver.delete(second)

    def test_delete_failed_is_a_compute_error(self) -> None:
        assert issubclass(DeleteFailed, AmphoraComputeError)


class TestSlowDelete:
    """delete_seconds: the instance is DELETING, then gone."""

    def test_deleting_then_gone(self, clock: FakeClock) -> None:
        driver = NoopDriver(delete_seconds=5, clock=clock)
        amphora_id = driver.build(name="amp", owner="o-1")
        driver.delete(amphora_id)
        deleting = driver.get_amphora(amphora_id=amphora_id)
        assert (deleting.state, deleting.raw_state, deleting.addresses) == (
            AmphoraState.DELETING,
            "deleting",
            (),
        )
        driver.delete(amphora_id)  # deleting again is accepted and changes nothing
        clock.advance(4.99)
        assert driver.status(amphora_id) is AmphoraState.DELETING
        clock.advance(0.01)
        with pytest.raises(InstanceNotFoundError):
            driver.status(amphora_id)
        assert driver.find() == []
        driver.delete(amphora_id)  # gone: still no error

    @pytest.mark.parametrize("method", ["suspend", "resume"])
    def test_a_deleting_instance_cannot_be_suspended_or_resumed(
        self, clock: FakeClock, method: str
    ) -> None:
        driver = NoopDriver(delete_seconds=5, clock=clock)
        amphora_id = driver.build(name="amp")
        driver.delete(amphora_id)
        with pytest.raises(InstanceNotFoundError):
            getattr(driver, method)(amphora_id)

    def test_delete_of_an_unknown_id_is_a_no_op(self) -> None:
        NoopDriver().delete("never-existed")


class TestSuspendResume:
    """Suspend keeps the identity; resume of a running instance is NotSuspendedError."""

    def test_suspend_resume_cycle(self, clock: FakeClock) -> None:
        driver = NoopDriver(clock=clock)
        amphora_id = driver.build(name="amp")
        with pytest.raises(NotSuspendedError):
            driver.resume(amphora_id)
        driver.suspend(amphora_id)
        suspended = driver.get_amphora(amphora_id=amphora_id)
        assert (suspended.state, suspended.raw_state, suspended.addresses) == (
            AmphoraState.SUSPENDED,
            "suspended",
            (),
        )
        driver.suspend(amphora_id)
        driver.resume(amphora_id)
        assert driver.status(amphora_id) is AmphoraState.ACTIVE


class TestTagHints:
    """Per-instance behaviour through ``noop:`` tags overrides the driver's defaults."""

    def test_build_seconds_hint(self, clock: FakeClock) -> None:
        driver = NoopDriver(clock=clock)
        slow = driver.build(name="slow", tags=["noop:build-seconds=30"])
        fast = driver.build(name="fast")
        assert driver.status(slow) is AmphoraState.BUILDING
        assert driver.status(fast) is AmphoraState.ACTIVE
        clock.advance(30)
        assert driver.status(slow) is AmphoraState.ACTIVE

    def test_build_seconds_hint_overrides_the_default(self, clock: FakeClock) -> None:
        driver = NoopDriver(build_seconds=100, clock=clock)
        assert driver.status(driver.build(name="a", tags=["noop:build-seconds=0"])) is (
            AmphoraState.ACTIVE
        )

    def test_fault_hint(self, clock: FakeClock) -> None:
        driver = NoopDriver(clock=clock)
        failing = driver.build(name="bad", tags=["noop:fault=No valid host"])
        fine = driver.build(name="good")
        assert driver.get_amphora(amphora_id=failing).fault == "No valid host"
        assert driver.status(failing) is AmphoraState.ERROR
        assert driver.status(fine) is AmphoraState.ACTIVE

    def test_fault_hint_may_contain_equals(self) -> None:
        driver = NoopDriver()
        amphora_id = driver.build(name="bad", tags=["noop:fault=quota=exceeded"])
        assert driver.get_amphora(amphora_id=amphora_id).fault == "quota=exceeded"

    def test_delete_failures_hint(self) -> None:
        driver = NoopDriver()
        flaky = driver.build(name="flaky", tags=["noop:delete-failures=1"])
        solid = driver.build(name="solid")
        with pytest.raises(DeleteFailed):
            driver.delete(flaky)
        driver.delete(flaky)
        driver.delete(solid)
        assert driver.find() == []

    def test_tags_are_kept_on_the_instance(self) -> None:
        driver = NoopDriver()
        amphora_id = driver.build(name="amp", tags=["team=lb", "noop:build-seconds=0"])
        assert driver.get_amphora(amphora_id=amphora_id).tags == ("team=lb", "noop:build-seconds=0")

    def test_unrelated_and_valueless_tags_are_ignored(self) -> None:
        driver = NoopDriver()
        amphora_id = driver.build(name="amp", tags=["noop:fault", "other:fault=x"])
        assert driver.status(amphora_id) is AmphoraState.ACTIVE

    @pytest.mark.parametrize(
        "tag", ["noop:build-seconds=soon", "noop:build-seconds=", "noop:delete-failures=1.5"]
    )
    def test_a_bad_hint_value_is_invalid_input(self, tag: str) -> None:
        driver = NoopDriver()
        with pytest.raises(AmphoraBuildError) as caught:
            driver.build(name="amp", owner="o-1", tags=[tag])
        err = caught.value
        assert (err.reason, err.retryable, err.field) == (Reason.INVALID_INPUT, False, "tags")
        assert "bad noop hint" in str(err)
        assert isinstance(err.__cause__, ValueError)
        assert driver.find() == []


class TestCallsAndHooks:
    """Calls are recorded when asked (without secrets); an on_call hook can inject failures."""

    def test_calls_are_not_kept_unless_asked(self) -> None:
        driver = NoopDriver()
        driver.delete(driver.build(name="amp", owner="o-1"))
        assert driver.calls == [], "a long-running backend must not grow with use"

    def test_calls_record_method_names_in_order(self) -> None:
        driver = NoopDriver(record_calls=True)
        amphora_id = driver.build(name="amp", owner="o-1")
        driver.status(amphora_id)
        driver.suspend(amphora_id)
        driver.resume(amphora_id)
        driver.delete(amphora_id)
        assert [c.method for c in driver.calls] == [
            "find",  # build looks for the owner's instance first
            "create",
            "find",  # status
            "suspend",
            "resume",
            "delete",
        ]
        create = driver.calls[1]
        assert create.arguments["name"] == "amp" and create.arguments["owner"] == "o-1"
        assert driver.calls[-1].arguments == {"amphora_id": amphora_id}

    def test_calls_is_a_copy(self) -> None:
        driver = NoopDriver(record_calls=True)
        driver.find()
        driver.calls.clear()
        assert len(driver.calls) == 1

    def test_calls_never_hold_user_data_files_or_keys(self) -> None:
        driver = NoopDriver(record_calls=True)
        key = make_ssh_public_key("secret-key-comment")
        driver.build(
            name="amp",
            owner="o-1",
            keys=[key],
            config_drive_files={"/etc/secret.conf": "FILE-CONTENT-SECRET"},
            user_data="USER-DATA-SECRET",
        )
        recorded = repr(driver.calls)
        for secret in ("FILE-CONTENT-SECRET", "USER-DATA-SECRET", key.split()[1], "secret-key"):
            assert secret not in recorded

    def test_on_call_receives_method_and_arguments(self) -> None:
        seen: list[tuple[str, dict[str, Any]]] = []
        driver = NoopDriver(on_call=lambda method, args: seen.append((method, dict(args))))
        driver.delete("some-id")
        assert seen == [("delete", {"amphora_id": "some-id"})]

    def test_an_on_call_error_propagates_and_the_call_is_recorded(self) -> None:
        quota = AmphoraBuildError("quota exceeded", reason=Reason.QUOTA_EXCEEDED, retryable=True)

        def hook(method: str, arguments: Mapping[str, Any]) -> None:
            if method == "create":
                raise quota

        driver = NoopDriver(on_call=hook, record_calls=True)
        with pytest.raises(AmphoraBuildError) as caught:
            driver.build(name="amp", owner="o-1")
        assert caught.value is quota
        assert [c.method for c in driver.calls] == ["find", "create"]
        assert driver.find(owner="o-1") == [], "a refused create builds nothing"

    def test_an_on_call_error_on_delete_keeps_the_instance(self) -> None:
        outage = AmphoraComputeError("backend down", reason=Reason.BACKEND_UNAVAILABLE)
        armed = threading.Event()

        def hook(method: str, arguments: Mapping[str, Any]) -> None:
            if method == "delete" and armed.is_set():
                raise outage

        driver = NoopDriver(on_call=hook)
        amphora_id = driver.build(name="amp")
        armed.set()
        with pytest.raises(AmphoraComputeError) as caught:
            driver.delete(amphora_id)
        assert caught.value.reason == Reason.BACKEND_UNAVAILABLE and caught.value.retryable
        assert driver.status(amphora_id) is AmphoraState.ACTIVE

    def test_call_latency_slows_every_call(self) -> None:
        driver = NoopDriver(call_latency=0.05)
        started = time.monotonic()
        driver.find()
        elapsed = time.monotonic() - started
        assert 0.05 <= elapsed < 5

    def test_no_latency_by_default(self) -> None:
        driver = NoopDriver()
        started = time.monotonic()
        for _ in range(100):
            driver.find()
        assert time.monotonic() - started < 5


class TestFileBackedState:
    """With state_file, instances outlive the driver object and are shared between objects."""

    def test_two_drivers_share_instances(self, tmp_path: Path, clock: FakeClock) -> None:
        state = tmp_path / "noop.json"
        first = NoopDriver(state_file=state, build_seconds=10, clock=clock)
        second = NoopDriver(state_file=state, clock=clock)
        amphora_id = first.build(name="amp", owner="o-1")
        assert second.get_amphora(owner="o-1").id == amphora_id
        assert second.status(amphora_id) is AmphoraState.BUILDING, "timing is kept per instance"
        assert second.build(name="amp", owner="o-1") == amphora_id, "idempotent across objects"
        clock.advance(10)
        second.suspend(amphora_id)
        assert first.status(amphora_id) is AmphoraState.SUSPENDED
        second.delete(amphora_id)
        assert first.find(amphora_id=amphora_id) == []
        with pytest.raises(InstanceNotFoundError):
            first.get_amphora(amphora_id=amphora_id)

    def test_a_new_driver_sees_earlier_instances(self, tmp_path: Path) -> None:
        state = tmp_path / "sub" / "noop.json"
        amphora_id = NoopDriver(state_file=state).build(name="amp", owner="o-1")
        assert state.exists()
        assert NoopDriver(state_file=state).get_amphora(owner="o-1").id == amphora_id

    def test_delete_failures_are_shared(self, tmp_path: Path) -> None:
        state = tmp_path / "noop.json"
        first = NoopDriver(state_file=state, delete_failures=1)
        second = NoopDriver(state_file=state)
        amphora_id = first.build(name="amp")
        with pytest.raises(DeleteFailed):
            second.delete(amphora_id)
        first.delete(amphora_id)
        assert second.find() == []


class TestConcurrency:
    """Thread-safety: concurrent builds never lose or mix up instances."""

    THREADS = 8

    @pytest.mark.parametrize("backing", ["memory", "file"])
    def test_distinct_owners_give_distinct_instances(self, tmp_path: Path, backing: str) -> None:
        state = tmp_path / "noop.json" if backing == "file" else None
        drivers = [NoopDriver(state_file=state)]
        if state is not None:
            drivers.append(NoopDriver(state_file=state))  # two objects writing one file
        barrier = threading.Barrier(self.THREADS)

        def build(index: int) -> str:
            barrier.wait(timeout=30)
            driver = drivers[index % len(drivers)]
            return driver.build(name=f"amp-{index}", owner=f"owner-{index}")

        with ThreadPoolExecutor(self.THREADS) as pool:
            ids = list(pool.map(build, range(self.THREADS)))
        assert len(set(ids)) == self.THREADS
        found = {i.id: i.owner for i in drivers[0].find()}
        assert found == {ids[i]: f"owner-{i}" for i in range(self.THREADS)}

    def test_sequential_builds_with_one_owner_give_one_instance(self) -> None:
        driver = NoopDriver()
        ids = {driver.build(name="amp", owner="o-1") for _ in range(5)}
        assert len(ids) == 1
        assert len(driver.find(owner="o-1")) == 1

    def test_concurrent_builds_with_one_owner_give_one_instance(self) -> None:
        """All threads pass find() before any create(); an atomic build would still yield one.

        The hook holds each create() until every thread has reached it (or 2 s passed, which
        is what happens once build is atomic and only one thread gets there).
        """
        barrier = threading.Barrier(self.THREADS)

        def hold_creates(method: str, arguments: Mapping[str, Any]) -> None:
            if method == "create":
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=2)

        driver = NoopDriver(on_call=hold_creates)
        with ThreadPoolExecutor(self.THREADS) as pool:
            ids = list(pool.map(lambda _: driver.build(name="amp", owner="o-1"), range(8)))
        assert len(driver.find(owner="o-1")) == 1
        assert len(set(ids)) == 1

    def test_calls_are_recorded_from_many_threads(self) -> None:
        driver = NoopDriver(record_calls=True)

        def hammer(_: int) -> None:
            for _ in range(50):
                driver.find()

        with ThreadPoolExecutor(self.THREADS) as pool:
            list(pool.map(hammer, range(self.THREADS)))
        assert len(driver.calls) == 50 * self.THREADS
