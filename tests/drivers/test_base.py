"""The behaviour every driver inherits from AmphoraComputeDriver.

``get_amphora`` must find exactly one instance or say why not, and ``build`` must be
idempotent on ``owner`` without ever adopting an instance on its way out or guessing between
two. A minimal in-test driver whose ``find`` returns what the test decides makes each case
exact; the noop driver shows the same through its public methods.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    InstanceNotFoundError,
    Reason,
)
from amphora_drivers.noop import NoopDriver
from amphora_drivers.types import AmphoraInstance, AmphoraState, AmphoraType, BuildRequest

from tests.drivers._clock import FakeClock


def instance(
    amphora_id: str, state: AmphoraState = AmphoraState.ACTIVE, owner: str = "o-1"
) -> AmphoraInstance:
    return AmphoraInstance(
        id=amphora_id,
        name=f"amp-{amphora_id}",
        amphora_type=AmphoraType.VM,
        state=state,
        raw_state=state.value.lower(),
        owner=owner,
    )


class ScriptedDriver(AmphoraComputeDriver):
    """Returns preset instances from find() and records what the base class asks of it."""

    name: ClassVar[str] = "scripted"
    supported_types: ClassVar[frozenset[AmphoraType]] = frozenset({AmphoraType.VM})

    def __init__(self, *instances: AmphoraInstance) -> None:
        self.instances = list(instances)
        self.created: list[BuildRequest] = []
        self.finds: list[dict[str, str | None]] = []
        self.rejection: AmphoraBuildError | None = None

    def find(
        self,
        *,
        amphora_id: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> list[AmphoraInstance]:
        self.finds.append({"amphora_id": amphora_id, "name": name, "owner": owner})
        return [
            i
            for i in self.instances
            if (amphora_id is None or i.id == amphora_id)
            and (name is None or i.name == name)
            and (owner is None or i.owner == owner)
        ]

    def create(self, request: BuildRequest) -> str:
        self.created.append(request)
        return "new"

    def validate(self, request: BuildRequest) -> None:
        if self.rejection is not None:
            raise self.rejection

    def delete(self, amphora_id: str) -> None:
        raise NotImplementedError

    def suspend(self, amphora_id: str) -> None:
        raise NotImplementedError

    def resume(self, amphora_id: str) -> None:
        raise NotImplementedError

    def release(self, amphora_id: str) -> None:
        raise NotImplementedError


class TestGetAmphora:
    """Exactly one criterion; exactly one match, or a precise error."""

    @pytest.mark.parametrize(
        "criteria",
        [
            {},
            {"amphora_name": "amp-a", "amphora_id": "a"},
            {"amphora_id": "a", "owner": "o-1"},
            {"amphora_name": "amp-a", "amphora_id": "a", "owner": "o-1"},
        ],
        ids=["none", "name+id", "id+owner", "all"],
    )
    def test_zero_or_several_criteria_are_a_value_error(self, criteria: dict[str, str]) -> None:
        driver = ScriptedDriver(instance("a"))
        with pytest.raises(ValueError, match="exactly one of amphora_name, amphora_id or owner"):
            driver.get_amphora(**criteria)
        assert driver.finds == [], "the backend is not asked"

    def test_by_id_name_and_owner(self) -> None:
        driver = ScriptedDriver(instance("a"), instance("b", owner="o-2"))
        assert driver.get_amphora(amphora_id="b").id == "b"
        assert driver.get_amphora("amp-a").id == "a", "name is the first positional argument"
        assert driver.get_amphora(owner="o-2").id == "b"
        assert driver.finds[0] == {"amphora_id": "b", "name": None, "owner": None}

    @pytest.mark.parametrize(
        ("criteria", "wording"),
        [
            ({"amphora_id": "zz"}, "id zz"),
            ({"amphora_name": "amp-zz"}, "name amp-zz"),
            ({"owner": "o-9"}, "owner o-9"),
        ],
    )
    def test_no_match_is_instance_not_found(self, criteria: dict[str, str], wording: str) -> None:
        with pytest.raises(InstanceNotFoundError) as caught:
            ScriptedDriver(instance("a")).get_amphora(**criteria)
        assert f"no amphora matches {wording}" in str(caught.value)
        assert caught.value.retryable is False

    def test_an_ambiguous_owner_is_not_guessed(self) -> None:
        driver = ScriptedDriver(instance("a"), instance("b"))
        with pytest.raises(AmphoraComputeError) as caught:
            driver.get_amphora(owner="o-1")
        err = caught.value
        assert not isinstance(err, InstanceNotFoundError)
        assert (err.reason, err.retryable) == (Reason.AMBIGUOUS_MATCH, False)
        assert "2 amphorae match owner o-1" in str(err)

    def test_status_is_the_state_of_get_amphora(self) -> None:
        driver = ScriptedDriver(instance("a", AmphoraState.SUSPENDED))
        assert driver.status("a") is AmphoraState.SUSPENDED
        with pytest.raises(InstanceNotFoundError):
            driver.status("zz")


class TestIdempotentBuild:
    """build_from adopts the owner's one live instance, refuses to guess, never adopts a
    dying one."""

    @pytest.mark.parametrize(
        "state",
        [AmphoraState.BUILDING, AmphoraState.ACTIVE, AmphoraState.ERROR, AmphoraState.SUSPENDED],
    )
    def test_a_live_instance_is_adopted(self, state: AmphoraState) -> None:
        driver = ScriptedDriver(instance("a", state))
        assert driver.build(name="amp", owner="o-1") == "a"
        assert driver.created == []

    @pytest.mark.parametrize("state", [AmphoraState.DELETING, AmphoraState.DELETED])
    def test_a_dying_instance_is_not_adopted(self, state: AmphoraState) -> None:
        driver = ScriptedDriver(instance("a", state))
        assert driver.build(name="amp", owner="o-1") == "new"
        assert len(driver.created) == 1

    def test_a_live_one_is_chosen_over_a_dying_one(self) -> None:
        driver = ScriptedDriver(instance("old", AmphoraState.DELETING), instance("a"))
        assert driver.build(name="amp", owner="o-1") == "a"

    def test_two_live_instances_are_refused(self) -> None:
        driver = ScriptedDriver(instance("a"), instance("b", AmphoraState.ERROR))
        with pytest.raises(AmphoraBuildError) as caught:
            driver.build(name="amp", owner="o-1")
        err = caught.value
        assert (err.reason, err.retryable) == (Reason.AMBIGUOUS_MATCH, False)
        assert "2 instances carry owner o-1" in str(err)
        assert driver.created == []

    def test_without_owner_every_build_creates(self) -> None:
        driver = ScriptedDriver(instance("a", owner="o-1"))
        driver.build(name="amp")
        assert driver.finds == [], "nothing to look for without an owner"
        assert len(driver.created) == 1

    def test_an_owner_the_caller_checked_is_not_looked_up_again(self) -> None:
        """owner_checked: the caller's own lookup just found nothing (one lookup per build)."""
        driver = ScriptedDriver()
        request = BuildRequest(name="amp", owner="o-1")
        assert driver.build_from(request, owner_checked=True) == "new"
        assert driver.finds == [] and len(driver.created) == 1
        assert driver.build_from(request) == "new"
        assert driver.finds == [{"amphora_id": None, "name": None, "owner": "o-1"}]

    def test_find_owners_asks_find_once_per_distinct_owner_by_default(self) -> None:
        driver = ScriptedDriver(instance("a", owner="o-1"), instance("b", owner="o-2"))
        found = driver.find_owners(["o-2", "o-3", "o-2"])
        assert [i.id for i in found] == ["b"]
        assert [f["owner"] for f in driver.finds] == ["o-2", "o-3"]

    def test_other_owners_are_not_adopted(self) -> None:
        driver = ScriptedDriver(instance("a", owner="o-2"))
        assert driver.build(name="amp", owner="o-1") == "new"

    def test_the_request_reaches_create_validated(self) -> None:
        driver = ScriptedDriver()
        driver.build("VM", "m1.small", "img-1", name="amp", owner="o-1", tags=["t"])
        request = driver.created[0]
        assert (request.amphora_type, request.amphora_flavor, request.image_id) == (
            AmphoraType.VM,
            "m1.small",
            "img-1",
        )
        assert (request.name, request.owner, request.tags) == ("amp", "o-1", ("t",))


class TestChecksBeforeBuilding:
    """Unsupported types and driver-specific rejections stop a build before any lookup."""

    def test_an_unsupported_type_is_not_implemented(self) -> None:
        driver = ScriptedDriver()
        with pytest.raises(NotImplementedError) as caught:
            driver.build("BareMetal", name="amp", owner="o-1")
        assert "'scripted' does not build BareMetal amphorae (supported: VM)" in str(caught.value)
        assert driver.finds == [] and driver.created == []

    def test_validate_rejects_before_anything_is_built(self) -> None:
        driver = ScriptedDriver()
        driver.rejection = AmphoraBuildError(
            "no such flavor", reason=Reason.FLAVOR_NOT_FOUND, retryable=False, field="flavor"
        )
        with pytest.raises(AmphoraBuildError) as caught:
            driver.build(name="amp", owner="o-1", amphora_flavor="m9.huge")
        assert caught.value is driver.rejection
        assert driver.finds == [] and driver.created == []

    def test_a_driver_must_implement_the_abstract_methods(self) -> None:
        class Incomplete(AmphoraComputeDriver):
            name = "incomplete"
            supported_types = frozenset({AmphoraType.VM})

        with pytest.raises(TypeError, match="abstract"):
            Incomplete()  # type: ignore[abstract]

    def test_default_hooks_do_nothing(self) -> None:
        driver = ScriptedDriver()
        AmphoraComputeDriver.validate(driver, BuildRequest(name="amp"))
        driver.close()


class TestWithTheNoopDriver:
    """The same rules, seen through the noop driver's public methods."""

    def test_two_records_with_one_owner_are_ambiguous(self) -> None:
        driver = NoopDriver()
        request = BuildRequest(name="amp", owner="o-1")
        driver.create(request)
        driver.create(request)
        with pytest.raises(AmphoraComputeError) as lookup:
            driver.get_amphora(owner="o-1")
        assert lookup.value.reason == Reason.AMBIGUOUS_MATCH
        with pytest.raises(AmphoraBuildError) as build:
            driver.build_from(request)
        assert build.value.reason == Reason.AMBIGUOUS_MATCH
        assert len(driver.find(owner="o-1")) == 2, "nothing more was built"

    def test_a_shared_name_is_ambiguous(self) -> None:
        driver = NoopDriver()
        driver.build(name="amp", owner="o-1")
        driver.build(name="amp", owner="o-2")
        with pytest.raises(AmphoraComputeError) as caught:
            driver.get_amphora(amphora_name="amp")
        assert caught.value.reason == Reason.AMBIGUOUS_MATCH

    def test_a_deleting_instance_is_not_adopted(self) -> None:
        clock = FakeClock()
        driver = NoopDriver(delete_seconds=10, clock=clock)
        old = driver.build(name="amp", owner="o-1")
        driver.delete(old)
        new = driver.build(name="amp", owner="o-1")
        assert new != old
        assert driver.status(old) is AmphoraState.DELETING
        assert driver.build(name="amp", owner="o-1") == new, "still idempotent"
        clock.advance(10)
        assert driver.get_amphora(owner="o-1").id == new

    def test_find_without_criteria_lists_managed_instances(self) -> None:
        driver = NoopDriver()
        ids = {driver.build(name=f"amp-{i}", owner=f"o-{i}") for i in range(3)}
        assert {i.id for i in driver.find()} == ids

    def test_find_without_criteria_skips_instances_without_owner(self) -> None:
        driver = NoopDriver()
        driver.build(name="unowned")
        assert driver.find() == []
