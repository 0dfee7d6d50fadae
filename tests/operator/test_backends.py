"""The typed driver proxy: owner lookups that arrive together share one driver call."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Mapping
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


class HeldLookup:
    """A Backend over ``driver`` whose first owner lookup ("o-1") stays in the driver until
    :meth:`release`: lookups started meanwhile find one already under way. ``also`` runs on
    every driver call after the hold (to fail some)."""

    def __init__(
        self, driver: NoopDriver, also: Callable[[str, Mapping[str, Any]], None] | None = None
    ) -> None:
        self.driver = driver
        self._gate, self._entered = threading.Event(), threading.Event()
        self._also = also
        driver.on_call = self._hook

    def _hook(self, method: str, arguments: Mapping[str, Any]) -> None:
        if method == "find" and arguments.get("owner") and not self._entered.is_set():
            self._entered.set()
            assert self._gate.wait(10), "the test never released the held lookup"
        if self._also is not None:
            self._also(method, arguments)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[tuple[Backend, asyncio.Task[Any]]]:
        """(the backend, the held first lookup's task) once that lookup is in the driver."""
        with ThreadPoolExecutor(4) as executor:
            backend = Backend(
                profile="noop",
                driver=self.driver,
                breaker=CircuitBreaker(BreakerSettings(), name="noop"),
                executor=executor,
                timeout=10,
                metrics=Metrics(),
            )
            first = asyncio.create_task(backend.by_owner("o-1"))
            for _ in range(500):
                if self._entered.is_set():
                    break
                await asyncio.sleep(0.01)
            assert self._entered.is_set(), "the first lookup never reached the driver"
            try:
                yield backend, first
            finally:
                self._gate.set()

    async def release(self) -> None:
        """Let the held lookup finish, once the lookups started meanwhile are waiting."""
        await asyncio.sleep(0.05)  # started tasks run first: they are ready, this is a timer
        self._gate.set()


def test_lookups_that_arrive_during_one_are_asked_together_in_one_call() -> None:
    driver = NoopDriver(record_calls=True)
    built = {o: driver.build(AmphoraType.VM, "f", "i", name=o, owner=o) for o in ("o-2", "o-4")}
    held = HeldLookup(driver)

    async def scenario() -> list[Any]:
        async with held.running() as (backend, first):
            rest = [asyncio.create_task(backend.by_owner(o)) for o in ("o-2", "o-3", "o-4")]
            await held.release()
            return await asyncio.gather(first, *rest)

    before = len(driver.calls)
    found = asyncio.run(scenario())
    assert [None if i is None else i.id for i in found] == [None, built["o-2"], None, built["o-4"]]
    calls = driver.calls[before:]
    assert [c.method for c in calls] == ["find", "find_owners"], "3 lookups, one call"
    assert calls[0].arguments["owner"] == "o-1"
    assert sorted(calls[1].arguments["owners"]) == ["o-2", "o-3", "o-4"]


def test_a_failed_batch_fails_its_own_lookups_and_the_next_one_asks_again() -> None:
    driver = NoopDriver(record_calls=True)
    mine = driver.build(AmphoraType.VM, "f", "i", name="n", owner="o-3")
    failed = threading.Event()

    def fail_once(method: str, arguments: Mapping[str, Any]) -> None:
        if method == "find_owners" and not failed.is_set():
            failed.set()
            raise AmphoraComputeError("boom", reason=Reason.BACKEND_UNAVAILABLE, retryable=True)

    held = HeldLookup(driver, also=fail_once)

    async def scenario() -> None:
        async with held.running() as (backend, first):
            batch = [asyncio.create_task(backend.by_owner(o)) for o in ("o-2", "o-3")]
            await held.release()
            assert await first is None
            for task in batch:
                with pytest.raises(AmphoraComputeError, match="boom"):
                    await task
            again = await backend.by_owner("o-3")
            assert again is not None and again.id == mine

    asyncio.run(scenario())
    assert failed.is_set()


def test_a_cancelled_lookup_leaves_the_others_of_its_call_answered() -> None:
    driver = NoopDriver(record_calls=True)
    mine = driver.build(AmphoraType.VM, "f", "i", name="n", owner="o-3")
    held = HeldLookup(driver)

    async def scenario() -> None:
        async with held.running() as (backend, first):
            gone = asyncio.create_task(backend.by_owner("o-2"))
            kept = asyncio.create_task(backend.by_owner("o-3"))
            await asyncio.sleep(0.05)
            gone.cancel()
            await held.release()
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
    driver = OneOwnerAtATime(record_calls=True)
    held = HeldLookup(driver)

    async def scenario() -> None:
        async with held.running() as (backend, first):
            # Answered while the first lookup is still held in the driver.
            others = await asyncio.gather(*(backend.by_owner(o) for o in ("o-2", "o-3")))
            assert others == [None, None]
            assert not first.done()
            await held.release()
            assert await first is None

    asyncio.run(scenario())
    calls = [(c.method, c.arguments["owner"]) for c in driver.calls]
    assert calls[0] == ("find", "o-1")
    assert sorted(calls[1:]) == [("find", "o-2"), ("find", "o-3")]
