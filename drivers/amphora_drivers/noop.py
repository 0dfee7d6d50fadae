"""An in-memory driver that builds nothing, for tests, benchmarks and demos.

It keeps instances in memory, indexed by id and by owner so that no lookup scans them all (or,
for tests that kill the operator, in a JSON file shared across processes), records calls when
asked to (``record_calls=True``; otherwise nothing grows with use), and simulates a compute
backend whose behaviour the caller decides: how long builds and deletes take, builds that end
in ERROR, deletes that fail ``k`` times, slow API calls, and any failure an ``on_call`` hook
raises (like httpx's MockTransport takes a handler).

Behaviour can also be chosen per instance through tags, so one operator can run fast, slow
and failing amphorae side by side::

    noop:build-seconds=5          this build takes 5 s to reach ACTIVE
    noop:fault=No valid host      this build ends in ERROR with that fault
    noop:delete-failures=2        the first 2 deletes of this instance raise DeleteFailed
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)
from amphora_drivers.types import AmphoraInstance, AmphoraState, AmphoraType, BuildRequest

__all__ = ["NoopCall", "NoopDriver"]

TAG_PREFIX = "noop:"


@dataclass(frozen=True)
class NoopCall:
    """One recorded driver call; arguments are kept without file contents or user data."""

    method: str
    arguments: Mapping[str, Any]


class _Record(BaseModel):
    """The stored state of one simulated instance (wall-clock times, so files survive)."""

    id: str
    name: str
    amphora_type: AmphoraType
    owner: str | None
    tags: tuple[str, ...]
    created_at: float
    build_seconds: float
    fault: str | None
    suspended: bool = False
    delete_failures_left: int = 0
    deleted_at: float | None = None
    delete_seconds: float = 0.0
    #: Built with an owner that release() dropped: still listed, with owner None.
    released: bool = False


@dataclass
class _Table:
    """Instances by id, with an owner index and the set of instances being deleted."""

    records: dict[str, _Record] = field(default_factory=dict)
    owners: dict[str, set[str]] = field(default_factory=dict)
    dying: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, records: dict[str, _Record]) -> _Table:
        table = cls()
        for record in records.values():
            table.add(record)
        return table

    def add(self, record: _Record) -> None:
        self.records[record.id] = record
        if record.owner is not None:
            self.owners.setdefault(record.owner, set()).add(record.id)
        if record.deleted_at is not None:
            self.dying.add(record.id)

    def remove(self, record_id: str) -> None:
        record = self.records.pop(record_id, None)
        self.dying.discard(record_id)
        if record is not None and record.owner is not None:
            ids = self.owners.get(record.owner, set())
            ids.discard(record_id)
            if not ids:
                self.owners.pop(record.owner, None)

    def mark_deleted(self, record: _Record, now: float) -> None:
        record.deleted_at = now
        self.dying.add(record.id)

    def forget_deleted(self, now: float) -> None:
        """Drop instances whose deletion finished (only those being deleted are looked at)."""
        gone = [
            k
            for k in self.dying
            if (r := self.records.get(k)) is None
            or (r.deleted_at is not None and now >= r.deleted_at + r.delete_seconds)
        ]
        for key in gone:
            self.remove(key)


@dataclass
class _Store:
    """The table, in memory or mirrored to a JSON file under an exclusive lock."""

    path: Path | None
    table: _Table = field(default_factory=_Table)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Table]:
        with self.lock:
            if self.path is None:
                yield self.table
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "a+") as lock_file:
                fcntl.flock(lock_file, fcntl.LOCK_EX)
                table = _Table.of(self._load())
                yield table
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps({k: r.model_dump(mode="json") for k, r in table.records.items()})
                )
                os.replace(tmp, self.path)

    def _load(self) -> dict[str, _Record]:
        if self.path is None or not self.path.exists():
            return {}
        raw = json.loads(self.path.read_text() or "{}")
        return {k: _Record.model_validate(v) for k, v in raw.items()}


class NoopDriver(AmphoraComputeDriver):
    """Simulated compute: every operation succeeds unless the configured behaviour says not."""

    name: ClassVar[str] = "noop"
    supported_types: ClassVar[frozenset[AmphoraType]] = frozenset(
        {AmphoraType.VM, AmphoraType.CONTAINER, AmphoraType.BARE_METAL}
    )
    instant_builds: ClassVar[bool] = True

    def __init__(
        self,
        *,
        build_seconds: float = 0.0,
        build_fault: str | None = None,
        delete_failures: int = 0,
        delete_seconds: float = 0.0,
        call_latency: float = 0.0,
        state_file: str | os.PathLike[str] | None = None,
        on_call: Callable[[str, Mapping[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
        record_calls: bool = False,
        outage_file: str | os.PathLike[str] | None = None,
    ) -> None:
        """Configure the simulation.

        :param build_seconds: seconds from build() until status() reports ACTIVE.
        :param build_fault: when set, every build ends in ERROR with this fault message.
        :param delete_failures: the first ``k`` delete() calls of each instance raise DeleteFailed.
        :param delete_seconds: seconds an instance stays DELETING before it is gone.
        :param call_latency: seconds every call sleeps, to simulate a slow API.
        :param state_file: keep instances in this JSON file so they outlive the process.
        :param on_call: called with (method, arguments) before each call; may raise any
            driver exception to inject a fault.
        :param clock: wall-clock source in seconds (injectable for tests).
        :param record_calls: keep every call in :attr:`calls` (off by default, so that a
            long-running benchmark's backend does not grow with use).
        :param outage_file: while this file exists, every call fails with BackendUnavailable
            (a simulated outage that another process, e.g. a test, switches on and off).
        """
        self.build_seconds = float(build_seconds)
        self.build_fault = build_fault or None
        self.delete_failures = int(delete_failures)
        self.delete_seconds = float(delete_seconds)
        self.call_latency = float(call_latency)
        self.on_call = on_call
        self.clock = clock
        self._store = _Store(Path(state_file) if state_file else None)
        self.record_calls = record_calls
        self._calls: list[NoopCall] = []
        self._calls_lock = threading.Lock()
        self.outage_file = Path(outage_file) if outage_file else None

    @property
    def calls(self) -> list[NoopCall]:
        """Every call made to this driver object, in order (a copy; needs record_calls)."""
        with self._calls_lock:
            return list(self._calls)

    def _enter(self, method: str, **arguments: Any) -> None:
        if self.record_calls:
            with self._calls_lock:
                self._calls.append(NoopCall(method, arguments))
        if self.call_latency:
            time.sleep(self.call_latency)
        if self.on_call is not None:
            self.on_call(method, arguments)
        if self.outage_file is not None and self.outage_file.exists():
            raise AmphoraComputeError(
                f"simulated outage ({self.outage_file} exists)",
                reason=Reason.BACKEND_UNAVAILABLE,
                retryable=True,
            )

    # -- interface ------------------------------------------------------------------------

    def create(self, request: BuildRequest) -> str:
        self._enter("create", name=request.name, owner=request.owner, type=request.amphora_type)
        hints = _tag_hints(request.tags)
        try:
            build_seconds = float(hints.get("build-seconds", self.build_seconds))
            delete_failures = int(hints.get("delete-failures", self.delete_failures))
        except ValueError as e:
            raise AmphoraBuildError(
                f"tags: bad noop hint ({e})",
                reason=Reason.INVALID_INPUT,
                retryable=False,
                field="tags",
            ) from e
        record = _Record(
            id=str(uuid.uuid4()),
            name=request.name,
            amphora_type=request.amphora_type,
            owner=request.owner,
            tags=request.tags,
            created_at=self.clock(),
            build_seconds=build_seconds,
            fault=hints.get("fault", self.build_fault),
            delete_failures_left=delete_failures,
            delete_seconds=self.delete_seconds,
        )
        with self._store.transaction() as table:
            table.add(record)
        return record.id

    def find(
        self,
        *,
        amphora_id: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> list[AmphoraInstance]:
        self._enter("find", amphora_id=amphora_id, name=name, owner=owner)
        now = self.clock()
        with self._store.transaction() as table:
            table.forget_deleted(now)
            if amphora_id is not None:
                record = table.records.get(amphora_id)
                candidates = [record] if record is not None else []
            elif owner is not None:
                candidates = [table.records[i] for i in table.owners.get(owner, ())]
            else:
                candidates = list(table.records.values())
        return [
            self._instance(r, now)
            for r in candidates
            if (amphora_id is None or r.id == amphora_id)
            and (name is None or r.name == name)
            and (owner is None or r.owner == owner)
            and (amphora_id is not None or name is not None or r.owner is not None or r.released)
        ]

    def find_owners(self, owners: Sequence[str]) -> list[AmphoraInstance]:
        """One look at the owner index for all of ``owners`` (one recorded call)."""
        self._enter("find_owners", owners=tuple(owners))
        wanted = set(owners)
        now = self.clock()
        with self._store.transaction() as table:
            table.forget_deleted(now)
            records = [table.records[i] for owner in wanted for i in table.owners.get(owner, ())]
        return [self._instance(r, now) for r in records if r.owner in wanted]

    def delete(self, amphora_id: str) -> None:
        self._enter("delete", amphora_id=amphora_id)
        now = self.clock()
        with self._store.transaction() as table:
            table.forget_deleted(now)
            record = table.records.get(amphora_id)
            if record is None or record.deleted_at is not None:
                return
            failures_left = record.delete_failures_left
            if failures_left > 0:
                record.delete_failures_left -= 1  # stored when the transaction ends
            else:
                table.mark_deleted(record, now)
                table.forget_deleted(now)
        if failures_left > 0:
            raise DeleteFailed(
                f"simulated delete failure ({failures_left - 1} left)", retryable=True
            )

    def release(self, amphora_id: str) -> None:
        self._enter("release", amphora_id=amphora_id)
        with self._store.transaction() as table:
            table.forget_deleted(self.clock())
            record = table.records.get(amphora_id)
            if record is None or record.owner is None:
                return
            table.remove(amphora_id)
            record.owner, record.released = None, True
            table.add(record)

    def suspend(self, amphora_id: str) -> None:
        self._enter("suspend", amphora_id=amphora_id)
        with self._store.transaction() as table:
            self._live(table, amphora_id).suspended = True

    def resume(self, amphora_id: str) -> None:
        self._enter("resume", amphora_id=amphora_id)
        with self._store.transaction() as table:
            record = self._live(table, amphora_id)
            if not record.suspended:
                raise NotSuspendedError(f"amphora {amphora_id} is not suspended")
            record.suspended = False

    # -- helpers --------------------------------------------------------------------------

    def _live(self, table: _Table, amphora_id: str) -> _Record:
        table.forget_deleted(self.clock())
        record = table.records.get(amphora_id)
        if record is None or record.deleted_at is not None:
            raise InstanceNotFoundError(f"no amphora with id {amphora_id}")
        return record

    @staticmethod
    def _instance(record: _Record, now: float) -> AmphoraInstance:
        if record.deleted_at is not None:
            state, raw = AmphoraState.DELETING, "deleting"
        elif now < record.created_at + record.build_seconds:
            state, raw = AmphoraState.BUILDING, "building"
        elif record.fault:
            state, raw = AmphoraState.ERROR, "error"
        elif record.suspended:
            state, raw = AmphoraState.SUSPENDED, "suspended"
        else:
            state, raw = AmphoraState.ACTIVE, "active"
        digest = hashlib.sha256(record.id.encode()).digest()
        return AmphoraInstance(
            id=record.id,
            name=record.name,
            amphora_type=record.amphora_type,
            state=state,
            raw_state=raw,
            # TEST-NET-1 documentation range: clearly fake, never routed.
            addresses=(f"192.0.2.{1 + digest[0] % 254}",) if state is AmphoraState.ACTIVE else (),
            fault=record.fault if state is AmphoraState.ERROR else None,
            owner=record.owner,
            tags=record.tags,
        )


def _tag_hints(tags: tuple[str, ...]) -> dict[str, str]:
    hints = {}
    for tag in tags:
        if tag.startswith(TAG_PREFIX) and "=" in tag:
            key, _, value = tag[len(TAG_PREFIX) :].partition("=")
            hints[key] = value
    return hints
