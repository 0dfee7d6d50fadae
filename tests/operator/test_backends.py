"""The typed driver proxy: owner lookups that arrive together share one driver call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from amphora_drivers import (
    AmphoraComputeDriver,
    AmphoraComputeError,
    AmphoraType,
    BreakerSettings,
    CircuitBreaker,
    Reason,
)
from amphora_drivers.noop import NoopDriver
from amphora_operator.backends import Backend
from amphora_operator.metrics import Metrics


def backend_for(driver: NoopDriver, executor: ThreadPoolExecutor) -> Backend:
    return Backend(
        profile="noop",
        driver=driver,
        breaker=CircuitBreaker(BreakerSettings(), name="noop"),
        executor=executor,
        timeout=10,
        metrics=Metrics(),
    )


def held_first_find(gate: threading.Event, entered: threading.Event) -> Callable[..., None]:
    """An on_call hook that holds the first owner lookup until ``gate`` opens."""
    held = {"done": False}

    def hook(method: str, arguments: Mapping[str, Any]) -> None:
        if method == "find" and arguments.get("owner") and not held["done"]:
            held["done"] = True
            entered.set()
            assert gate.wait(10), "the test never opened the gate"

    return hook


async def until(event: threading.Event) -> None:
    for _ in range(500):
        if event.is_set():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the first lookup never reached the driver")


def test_lookups_that_arrive_during_one_are_asked_together_in_one_call() -> None:
    gate, entered = threading.Event(), threading.Event()
    driver = NoopDriver(record_calls=True)
    owners = ["o-1", "o-2", "o-3", "o-4"]
    built = {o: driver.build(AmphoraType.VM, "f", "i", name=o, owner=o) for o in ("o-2", "o-4")}
    driver.on_call = held_first_find(gate, entered)

    async def scenario() -> list[Any]:
        with ThreadPoolExecutor(4) as executor:
            backend = backend_for(driver, executor)
            first = asyncio.create_task(backend.by_owner(owners[0]))
            await until(entered)  # the first lookup is in the driver: the rest must queue
            rest = [asyncio.create_task(backend.by_owner(o)) for o in owners[1:]]
            await asyncio.sleep(0.05)
            gate.set()
            return await asyncio.gather(first, *rest)

    before = len(driver.calls)
    found = asyncio.run(scenario())
    assert [None if i is None else i.id for i in found] == [None, built["o-2"], None, built["o-4"]]
    calls = driver.calls[before:]
    assert [c.method for c in calls] == ["find", "find_owners"], "3 lookups, one call"
    assert calls[0].arguments["owner"] == "o-1"
    assert sorted(calls[1].arguments["owners"]) == ["o-2", "o-3", "o-4"]


def test_a_failed_batch_fails_its_own_lookups_and_the_next_one_asks_again() -> None:
    gate, entered = threading.Event(), threading.Event()
    driver = NoopDriver(record_calls=True)
    hold = held_first_find(gate, entered)

    def hook(method: str, arguments: Mapping[str, Any]) -> None:
        hold(method, arguments)
        if method == "find_owners" and not failed.is_set():
            failed.set()
            raise AmphoraComputeError("boom", reason=Reason.BACKEND_UNAVAILABLE, retryable=True)

    failed = threading.Event()
    mine = driver.build(AmphoraType.VM, "f", "i", name="n", owner="o-3")
    driver.on_call = hook

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            backend = backend_for(driver, executor)
            first = asyncio.create_task(backend.by_owner("o-1"))
            await until(entered)
            batch = [asyncio.create_task(backend.by_owner(o)) for o in ("o-2", "o-3")]
            await asyncio.sleep(0.05)
            gate.set()
            assert await first is None
            for task in batch:
                with pytest.raises(AmphoraComputeError, match="boom"):
                    await task
            again = await backend.by_owner("o-3")
            assert again is not None and again.id == mine

    asyncio.run(scenario())
    assert failed.is_set()


def test_a_cancelled_lookup_leaves_the_others_of_its_call_answered() -> None:
    gate, entered = threading.Event(), threading.Event()
    driver = NoopDriver(record_calls=True)
    mine = driver.build(AmphoraType.VM, "f", "i", name="n", owner="o-3")
    driver.on_call = held_first_find(gate, entered)

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            backend = backend_for(driver, executor)
            first = asyncio.create_task(backend.by_owner("o-1"))
            await until(entered)
            gone = asyncio.create_task(backend.by_owner("o-2"))
            kept = asyncio.create_task(backend.by_owner("o-3"))
            await asyncio.sleep(0.05)
            gone.cancel()
            gate.set()
            assert await first is None
            found = await kept
            assert found is not None and found.id == mine
            with pytest.raises(asyncio.CancelledError):
                await gone

    asyncio.run(scenario())


class OneOwnerAtATime(NoopDriver):
    """A driver without a one-call find_owners: the base class's loop over find()."""

    find_owners = AmphoraComputeDriver.find_owners


def test_drivers_without_their_own_find_owners_are_asked_one_owner_each_in_parallel() -> None:
    """Batching them would serialise their lookups in one thread, slower than before."""
    gate, entered = threading.Event(), threading.Event()
    driver = OneOwnerAtATime(record_calls=True)
    driver.on_call = held_first_find(gate, entered)

    async def scenario() -> None:
        with ThreadPoolExecutor(4) as executor:
            backend = backend_for(driver, executor)
            first = asyncio.create_task(backend.by_owner("o-1"))
            await until(entered)
            # Answered while the first lookup is still held in the driver.
            assert await asyncio.gather(*(backend.by_owner(o) for o in ("o-2", "o-3"))) == [
                None,
                None,
            ]
            assert not first.done()
            gate.set()
            assert await first is None

    asyncio.run(scenario())
    calls = [(c.method, c.arguments["owner"]) for c in driver.calls]
    assert calls[0] == ("find", "o-1")
    assert sorted(calls[1:]) == [("find", "o-2"), ("find", "o-3")]
