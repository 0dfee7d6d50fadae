"""Drivers are found by name through the ``amphora.compute_drivers`` entry points.

The operator's configuration names a driver; a typo must fail with a message that says what
is installed, and an entry point that is not a driver must never be instantiated.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint
from typing import Any

import pytest
from amphora_drivers import registry
from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.noop import NoopDriver
from amphora_drivers.registry import (
    ENTRY_POINT_GROUP,
    UnknownDriverError,
    available_drivers,
    driver_class,
    load_driver,
)
from amphora_drivers.types import AmphoraState

from tests.drivers._clock import FakeClock


class FakeDriver(NoopDriver):
    """A second driver class, registered only through a patched entry point."""

    name = "fake"

    def __init__(self, *, region: str = "default", **options: Any) -> None:
        super().__init__(**options)
        self.region = region


def not_a_driver() -> None:
    """A function, which an entry point may wrongly name."""


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Replace the installed entry points; return the name -> target map to fill in."""
    targets: dict[str, str] = {}

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return [EntryPoint(name=n, value=v, group=group) for n, v in targets.items()]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    return targets


class TestInstalled:
    """The package registers the noop driver."""

    def test_group_name(self) -> None:
        assert ENTRY_POINT_GROUP == "amphora.compute_drivers"

    def test_noop_is_available(self) -> None:
        names = available_drivers()
        assert "noop" in names
        assert names == sorted(names)

    def test_driver_class(self) -> None:
        assert driver_class("noop") is NoopDriver

    def test_load_driver_passes_options(self) -> None:
        clock = FakeClock()
        driver = load_driver("noop", build_seconds=1, clock=clock)
        assert isinstance(driver, NoopDriver)
        assert driver.build_seconds == 1.0
        amphora_id = driver.build(name="amp")
        assert driver.status(amphora_id) is AmphoraState.BUILDING
        clock.advance(1)
        assert driver.status(amphora_id) is AmphoraState.ACTIVE

    def test_load_driver_gives_fresh_objects(self) -> None:
        assert load_driver("noop") is not load_driver("noop")

    def test_an_unknown_option_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match="no_such_option"):
            load_driver("noop", no_such_option=True)


class TestUnknownName:
    """An unknown name lists what is installed and where drivers are looked up."""

    def test_message_lists_installed_drivers_and_group(self) -> None:
        with pytest.raises(UnknownDriverError) as caught:
            load_driver("nvoa")
        message = str(caught.value)
        assert "'nvoa'" in message
        assert "noop" in message
        assert "'amphora.compute_drivers'" in message

    def test_is_a_lookup_error(self) -> None:
        with pytest.raises(LookupError):
            driver_class("nvoa")

    def test_lists_every_installed_driver_sorted(self, installed: dict[str, str]) -> None:
        installed["zeta"] = "amphora_drivers.noop:NoopDriver"
        installed["alpha"] = "amphora_drivers.noop:NoopDriver"
        with pytest.raises(UnknownDriverError, match="installed drivers: alpha, zeta "):
            driver_class("beta")

    def test_says_none_when_nothing_is_installed(self, installed: dict[str, str]) -> None:
        assert available_drivers() == []
        with pytest.raises(UnknownDriverError, match="installed drivers: none"):
            load_driver("noop")

    def test_names_are_case_sensitive(self) -> None:
        with pytest.raises(UnknownDriverError):
            driver_class("NOOP")


class TestEntryPointTargets:
    """Only AmphoraComputeDriver subclasses are accepted from entry points."""

    def test_a_third_party_driver_is_loaded(self, installed: dict[str, str]) -> None:
        installed["fake"] = f"{__name__}:FakeDriver"
        assert available_drivers() == ["fake"]
        driver = load_driver("fake", region="eu-1")
        assert isinstance(driver, FakeDriver) and driver.region == "eu-1"

    @pytest.mark.parametrize(
        "target",
        [
            "builtins:dict",  # a class, not a driver
            f"{__name__}:not_a_driver",  # a function
            "amphora_drivers.registry:ENTRY_POINT_GROUP",  # a string
            "amphora_drivers.base:AmphoraComputeDriver.close",  # a method
        ],
    )
    def test_a_non_driver_is_a_type_error(self, installed: dict[str, str], target: str) -> None:
        installed["bad"] = target
        with pytest.raises(TypeError, match="'bad' does not name an AmphoraComputeDriver"):
            driver_class("bad")
        with pytest.raises(TypeError):
            load_driver("bad")

    def test_the_abstract_base_is_a_driver_class_but_cannot_be_built(
        self, installed: dict[str, str]
    ) -> None:
        installed["base"] = "amphora_drivers.base:AmphoraComputeDriver"
        assert driver_class("base") is AmphoraComputeDriver
        with pytest.raises(TypeError, match="abstract"):
            load_driver("base")
