"""The reconciler runtime: observe the backend, plan, persist intent, act, write status.

Two triggers share one code path under a per-Amphora lock: kopf handlers (create, update,
resume) reconcile one Amphora at once with targeted lookups; the poller lists each backend's
instances in ONE driver call per interval and reconciles only what changed, so backend load
does not grow with the number of Amphorae. It polls every ``poll_interval`` while anything is
moving and every ``resync_interval`` (with jitter) when all is stable, which bounds how long
drift (an instance deleted or broken behind the operator's back) goes unnoticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from amphora_drivers import (
    AmphoraComputeError,
    AmphoraInstance,
    AmphoraState,
    AmphoraType,
    BuildRequest,
    NotSuspendedError,
    Reason,
    ServerGroup,
    UnknownDriverError,
)
from amphora_drivers.base import describe_validation_error
from pydantic import ValidationError

from amphora_operator.backends import Backend, BackendPool, UnknownProfileError
from amphora_operator.conditions import now_rfc3339, set_condition
from amphora_operator.config import OperatorConfig
from amphora_operator.kube import KubeGateway, SecretNotFound
from amphora_operator.metrics import Metrics
from amphora_operator.model import FINALIZER, AmphoraSpec, AmphoraStatus, Phase
from amphora_operator.planner import (
    Build,
    Delete,
    Observation,
    Plan,
    Resume,
    Suspend,
    instance_name,
    mark_failed,
    next_retry,
    owner_key,
    parse_time,
    plan,
    plan_deletion,
)

__all__ = ["Controller", "spec_field_path"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: BuildRequest fields as the user wrote them in the Amphora spec.
_SPEC_FIELDS = {
    "amphora_type": "spec.type",
    "amphora_flavor": "spec.flavor",
    "image_id": "spec.image",
    "keys": "spec.keys",
    "sec_groups": "spec.securityGroups",
    "network_ids": "spec.networks",
    "config_drive_files": "spec.configDriveFiles",
    "user_data": "spec.userData",
    "tags": "spec.tags",
    "availability_zone": "spec.availabilityZone",
    "server_group": "spec.serverGroup",
}
_STABLE = (Phase.READY, Phase.SUSPENDED)


def spec_field_path(driver_field: str | None) -> str:
    """Translate a driver input field (``keys.0``) to the spec path a user wrote (spec.keys)."""
    head = (driver_field or "spec").split(".", 1)[0]
    return _SPEC_FIELDS.get(head, "spec")


@dataclass
class Tracked:
    """The latest known body of one Amphora and the lock serialising work on it."""

    body: dict[str, Any]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    backend: Backend | None = None
    #: Set after a pass that needed nothing: what a poll must see differ to plan again.
    settled: Settled | None = None
    #: The object is gone from the API: never act for it again.
    gone: bool = False


@dataclass(frozen=True)
class Settled:
    """A reconcile that ended with nothing to do, so a poll round can skip it cheaply.

    Planning again would give the same answer while the body (resourceVersion) and what the
    backend shows are unchanged, until the retry time (if any) comes.
    """

    resource_version: str
    probe: Probe
    observation: Observation
    retry_at: datetime | None

    def still_holds(self, body: dict[str, Any], index: InstanceIndex, now: datetime) -> bool:
        return (
            body["metadata"].get("resourceVersion") == self.resource_version
            and (self.retry_at is None or now < self.retry_at)
            and self.probe.read(index) == self.observation
        )


@dataclass(frozen=True)
class Probe:
    """Where one Amphora's instances are looked up: by id, or by owner key before an id."""

    current_id: str | None
    current_owner: str | None
    replacement_id: str | None
    replacement_owner: str | None
    retired: tuple[str, ...]

    @classmethod
    def of(cls, uid: str, spec: AmphoraSpec, status: AmphoraStatus) -> Probe:
        rep = status.replacement
        current_id = status.compute_id or spec.import_id
        return cls(
            current_id=current_id,
            current_owner=None if current_id else owner_key(uid, status.revision),
            replacement_id=rep.compute_id if rep else None,
            replacement_owner=owner_key(uid, rep.revision) if rep and not rep.compute_id else None,
            retired=tuple(status.retired),
        )

    def read(self, index: InstanceIndex) -> Observation | None:
        """The observation from one listing; None when an id is not in it (look it up)."""
        ids = [i for i in (self.current_id, self.replacement_id, *self.retired) if i]
        if any(i not in index.by_id for i in ids):
            return None

        def pick(amphora_id: str | None, owner: str | None) -> AmphoraInstance | None:
            if amphora_id is not None:
                return index.by_id[amphora_id]
            return index.by_owner.get(owner) if owner is not None else None

        return Observation(
            current=pick(self.current_id, self.current_owner),
            replacement=pick(self.replacement_id, self.replacement_owner),
            retired={rid: index.by_id[rid] for rid in self.retired},
        )


@dataclass
class InstanceIndex:
    """One backend listing, by id and by owner, for a poll round."""

    by_id: dict[str, AmphoraInstance]
    by_owner: dict[str, AmphoraInstance]

    @classmethod
    def of(cls, instances: list[AmphoraInstance]) -> InstanceIndex:
        by_owner: dict[str, AmphoraInstance] = {}
        for instance in instances:
            if instance.owner is not None and instance.state not in (
                AmphoraState.DELETED,
                AmphoraState.DELETING,
            ):
                by_owner[instance.owner] = instance
        return cls({i.id: i for i in instances}, by_owner)


class Controller:
    """Reconciles Amphorae through compute backends; kopf handlers call into it."""

    def __init__(
        self,
        *,
        config: OperatorConfig,
        backends: BackendPool,
        kube: KubeGateway,
        metrics: Metrics,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.backends = backends
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self._tracked: dict[str, Tracked] = {}
        self._wake: asyncio.Event | None = None
        self._kube_executor = ThreadPoolExecutor(
            max_workers=config.reconcile.concurrency, thread_name_prefix="kube"
        )
        self._semaphore: asyncio.Semaphore | None = None
        #: Amphorae with a reconcile requested (uid → trigger) and their running tasks.
        self._dirty: dict[str, str] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    # -- tracking (from kopf watch events) --------------------------------------------------

    def track(self, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        tracked = self._tracked.get(uid)
        if tracked is None:
            self._tracked[uid] = Tracked(body=copy.deepcopy(body))
        elif _newer(body, tracked.body):
            tracked.body = copy.deepcopy(body)

    def forget(self, uid: str) -> None:
        self._tracked.pop(uid, None)

    def tracked_count(self) -> int:
        return len(self._tracked)

    # -- triggers ---------------------------------------------------------------------------

    def submit(self, body: dict[str, Any], trigger: str) -> None:
        """Schedule a reconcile of this Amphora and return at once (the handler path).

        Driver and API calls then run in a background task, so a kopf handler never waits for
        a backend. Requests arriving while one runs coalesce into one more pass. Nothing is
        lost if the process dies first: kopf's resume handler and the poller reconcile every
        Amphora again after a restart.
        """
        self.track(body)
        uid = body["metadata"]["uid"]
        self._dirty[uid] = trigger
        if uid not in self._running:
            task = asyncio.create_task(self._drain(uid))
            self._running[uid] = task

    async def _drain(self, uid: str) -> None:
        try:
            while uid in self._dirty:
                trigger = self._dirty.pop(uid)
                await self.reconcile(uid, trigger)
        except Exception:  # the poller will retry; never lose the task's error silently
            log.exception("reconcile failed", extra={"uid": uid})
        finally:
            self._running.pop(uid, None)

    async def reconcile(self, uid: str, trigger: str) -> None:
        """Reconcile one tracked Amphora now, with targeted lookups."""
        tracked = self._tracked.get(uid)
        if tracked is None:
            return
        started = time.perf_counter()
        async with tracked.lock:
            if not tracked.body["metadata"].get("deletionTimestamp"):
                await self._limited(self._reconcile_locked(tracked, index=None))
        self.metrics.reconcile_seconds.labels(trigger).observe(time.perf_counter() - started)
        self._wake_poller()

    async def settle(self) -> None:
        """Wait until every scheduled reconcile has run (for shutdown and tests)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def finalize(self, body: dict[str, Any]) -> str | None:
        """Delete what the Amphora owns; return why it must wait, or None when done."""
        self.track(body)
        tracked = self._tracked[body["metadata"]["uid"]]
        async with tracked.lock:
            result = await self._finalize_locked(tracked)
        if result is None:
            self.forget(body["metadata"]["uid"])
        return result

    async def vanished(self, body: dict[str, Any]) -> None:
        """The object is gone. If it went without ever being marked for deletion although our
        finalizer was on it, our clean-up never ran (the apiserver deletes at once when a
        DELETE races the finalizer being added): run it now, after any reconcile in flight,
        best effort."""
        uid = body["metadata"]["uid"]
        tracked = self._tracked.get(uid) or Tracked(body=copy.deepcopy(body))
        async with tracked.lock:
            tracked.gone = True
            if _newer(body, tracked.body):
                tracked.body = copy.deepcopy(body)
            meta = body["metadata"]
            # With our finalizer but never marked for deletion: the apiserver deleted it at once
            # (a normal deletion shows its deletionTimestamp in the DELETED event).
            if FINALIZER in (meta.get("finalizers") or []) and not meta.get("deletionTimestamp"):
                log.warning(
                    "deleted without clean-up; deleting its instances now",
                    extra={
                        "amphora": f"{body['metadata'].get('namespace')}/"
                        f"{body['metadata'].get('name')}"
                    },
                )
                try:
                    await self._finalize_locked(tracked)
                except Exception:
                    log.warning("clean-up after an unfinalized deletion failed", exc_info=True)
        self.forget(uid)

    async def run_poller(self) -> None:
        """Poll backends for ever (cancelled at operator shutdown)."""
        self._wake = asyncio.Event()
        while True:
            try:
                busy = await self.poll_once()
            except Exception:  # the poller must survive anything one round throws
                log.exception("poll round failed")
                busy = True
            interval = self.config.reconcile.poll_interval
            if not busy:
                interval = self.config.reconcile.resync_interval * random.uniform(0.9, 1.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()

    async def poll_once(self) -> bool:
        """One round over every backend; return True while anything is still moving."""
        groups: dict[int, tuple[Backend, list[Tracked]]] = {}
        unbound: list[Tracked] = []
        for tracked in list(self._tracked.values()):
            if tracked.body["metadata"].get("deletionTimestamp"):
                continue
            if tracked.backend is None:
                unbound.append(tracked)
            else:
                groups.setdefault(id(tracked.backend), (tracked.backend, []))[1].append(tracked)
        jobs: list[Awaitable[None]] = [self._poll_reconcile(t, None) for t in unbound]
        for backend, items in groups.values():
            try:
                instances: list[AmphoraInstance] = await backend.call("find")
            except AmphoraComputeError as e:
                jobs.extend(self._poll_backend_down(t, e) for t in items)
                continue
            index = InstanceIndex.of(instances)
            jobs.extend(self._poll_reconcile(t, index) for t in items)
        for failure in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(failure, Exception):  # one Amphora's trouble must not stop the round
                log.warning("reconcile in poll round failed", exc_info=failure)
        phases: dict[str, int] = {p.value: 0 for p in Phase}
        busy = False
        for tracked in self._tracked.values():
            status = tracked.body.get("status") or {}
            phase = status.get("phase") or Phase.PENDING.value
            phases[phase] = phases.get(phase, 0) + 1
            if phase not in _STABLE or status.get("retired") or status.get("replacement"):
                busy = True
        for phase, count in phases.items():
            self.metrics.amphorae.labels(phase).set(count)
        return busy

    # -- internals --------------------------------------------------------------------------

    def _wake_poller(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _limited(self, job: Awaitable[T]) -> T:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.config.reconcile.concurrency)
        async with self._semaphore:
            return await job

    async def _poll_reconcile(self, tracked: Tracked, index: InstanceIndex | None) -> None:
        if tracked.lock.locked():
            return  # a handler is on it right now
        if (
            index is not None
            and tracked.settled is not None
            and tracked.settled.still_holds(tracked.body, index, self.clock())
        ):
            return
        async with tracked.lock:
            if tracked.gone or tracked.body["metadata"].get("deletionTimestamp"):
                return
            started = time.perf_counter()
            await self._limited(self._reconcile_locked(tracked, index=index))
            self.metrics.reconcile_seconds.labels("poll").observe(time.perf_counter() - started)

    async def _poll_backend_down(self, tracked: Tracked, error: AmphoraComputeError) -> None:
        async with tracked.lock:
            status = AmphoraStatus.model_validate(tracked.body.get("status") or {})
            self._backend_condition(status, tracked, error)
            await self._write(tracked, status)

    async def _kube(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._kube_executor, lambda: fn(*args))

    def _backend_condition(
        self, status: AmphoraStatus, tracked: Tracked, error: AmphoraComputeError | None
    ) -> None:
        generation = tracked.body["metadata"].get("generation")
        if error is None:
            ok, reason, message = True, "Reachable", "the compute backend answers"
        else:
            ok, reason, message = False, error.reason, error.message
        status.conditions = set_condition(
            status.conditions,
            type="BackendAvailable",
            status=ok,
            reason=reason,
            message=message,
            generation=generation,
            now=now_rfc3339(self.clock()),
        )

    async def _write(self, tracked: Tracked, status: AmphoraStatus) -> None:
        """Patch status when it differs from what the API holds; keep the returned body."""
        new = status.model_dump(mode="json", by_alias=True)
        old = AmphoraStatus.model_validate(tracked.body.get("status") or {}).model_dump(
            mode="json", by_alias=True
        )
        if new == old:
            return
        meta = tracked.body["metadata"]
        body = await self._kube(self.kube.patch_status, meta["namespace"], meta["name"], new)
        self.metrics.status_writes.inc()
        tracked.body = body

    def _event(self, tracked: Tracked, type_: str, reason: str, message: str) -> None:
        body = tracked.body
        loop = asyncio.get_running_loop()
        loop.run_in_executor(
            self._kube_executor, self.kube.post_event, body, type_, reason, message
        )
        log.info(
            "amphora event",
            extra={
                "amphora": f"{body['metadata'].get('namespace')}/{body['metadata'].get('name')}",
                "event_reason": reason,
            },
        )

    def _resolve(self, tracked: Tracked, spec: AmphoraSpec) -> Backend:
        profile = self.backends.profile_for(spec.type, spec.driver)
        backend = self.backends.get(profile, tracked.body["metadata"]["namespace"])
        tracked.backend = backend
        return backend

    async def _reconcile_locked(self, tracked: Tracked, index: InstanceIndex | None) -> None:
        meta = tracked.body["metadata"]
        uid, generation = meta["uid"], meta.get("generation")
        status = AmphoraStatus.model_validate(tracked.body.get("status") or {})
        stamp = now_rfc3339(self.clock())
        try:
            spec = AmphoraSpec.model_validate(tracked.body.get("spec") or {})
        except ValidationError as e:
            _field_path, message = describe_validation_error(e)
            failure: tuple[str, str] | None = ("InvalidSpec", f"spec.{message}")
        else:
            try:
                backend = self._resolve(tracked, spec)
                failure = None
            except (UnknownProfileError, UnknownDriverError) as e:
                failure = ("UnknownDriver", str(e))
            except Exception as e:  # a driver constructor failed: credentials, config...
                failure = (
                    "DriverUnavailable",
                    f"compute profile could not start: {type(e).__name__}: {e}",
                )
        if failure is not None:
            reason, message = failure
            mark_failed(status, reason=reason, message=message, generation=generation, stamp=stamp)
            await self._write(tracked, status)
            return

        for _attempt in range(2):  # a second pass picks up builds that finished at once
            try:
                observation = await self._observe(backend, uid, spec, status, index)
            except AmphoraComputeError as e:
                self._backend_condition(status, tracked, e)
                await self._write(tracked, status)
                return
            result = plan(
                spec=spec,
                status=status,
                observation=observation,
                generation=generation or 0,
                profile=backend.profile,
                now=self.clock(),
                retry_base=self.config.reconcile.retry_base,
                retry_max=self.config.reconcile.retry_max,
            )
            self._backend_condition(result.status, tracked, None)
            previous_phase = tracked.body.get("status", {}).get("phase")
            if any(isinstance(a, Build) for a in result.actions) and not (
                await self._ensure_finalizer(tracked)
            ):
                return  # gone, being deleted or changed meanwhile: never build for it
            if _intent_changed(status, result.status) and result.actions:
                await self._write(tracked, result.status)
            if result.actions:
                await self._act(tracked, backend, spec, result)
            built = any(isinstance(a, Build) for a in result.actions)
            if not (built and _attempt == 0):
                # After a first build the next pass writes (the owner key makes the id
                # recoverable meanwhile), so an instantly ACTIVE build costs one write.
                await self._write(tracked, result.status)
            for type_, reason, message in result.events:
                self._event(tracked, type_, reason, message)
            if result.status.phase != previous_phase and result.status.phase in _STABLE:
                self._event(
                    tracked,
                    "Normal",
                    result.status.phase.value,
                    f"instance {result.status.compute_id} is {result.status.raw_state}",
                )
            status = result.status
            index = None
            tracked.settled = None
            if not result.actions:
                tracked.settled = Settled(
                    resource_version=tracked.body["metadata"].get("resourceVersion", ""),
                    probe=Probe.of(uid, spec, status),
                    observation=observation,
                    retry_at=parse_time(status.next_retry_time) if status.next_retry_time else None,
                )
            if not built:
                return

    async def _ensure_finalizer(self, tracked: Tracked) -> bool:
        """Our finalizer is on the object before anything is built for it (kopf may not have
        added it yet), so that a deletion can never skip the clean-up."""
        meta = tracked.body["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER in finalizers:
            return True
        if meta.get("deletionTimestamp"):
            return False
        body = await self._kube(
            self.kube.add_finalizer,
            meta["namespace"],
            meta["name"],
            meta["resourceVersion"],
            [*finalizers, FINALIZER],
        )
        if body is None:
            return False
        tracked.body = body
        return True

    async def _observe(
        self,
        backend: Backend,
        uid: str,
        spec: AmphoraSpec,
        status: AmphoraStatus,
        index: InstanceIndex | None,
    ) -> Observation:
        async def by_id(amphora_id: str) -> AmphoraInstance | None:
            if index is not None and amphora_id in index.by_id:
                return index.by_id[amphora_id]
            found: list[AmphoraInstance] = await backend.call("find", amphora_id=amphora_id)
            return found[0] if found else None

        async def by_owner(owner: str) -> AmphoraInstance | None:
            if index is not None:
                return index.by_owner.get(owner)
            found: list[AmphoraInstance] = await backend.call("find", owner=owner)
            live = [
                i for i in found if i.state not in (AmphoraState.DELETED, AmphoraState.DELETING)
            ]
            candidates = live or found
            return candidates[0] if candidates else None

        async def pick(amphora_id: str | None, owner: str | None) -> AmphoraInstance | None:
            if amphora_id is not None:
                return await by_id(amphora_id)
            return await by_owner(owner) if owner is not None else None

        # The same keys a poll round uses to tell whether anything changed.
        probe = Probe.of(uid, spec, status)
        return Observation(
            current=await pick(probe.current_id, probe.current_owner),
            replacement=await pick(probe.replacement_id, probe.replacement_owner),
            retired={rid: await by_id(rid) for rid in probe.retired},
        )

    async def _act(
        self, tracked: Tracked, backend: Backend, spec: AmphoraSpec, result: Plan
    ) -> None:
        s = result.status
        meta = tracked.body["metadata"]
        generation = meta.get("generation")
        now = self.clock()
        stamp = now_rfc3339(now)
        for action in result.actions:
            try:
                if isinstance(action, Build):
                    request = await self._build_request(spec, meta, action.revision)
                    new_id: str = await backend.call("build_from", request)
                    if action.replacement and s.replacement is not None:
                        s.replacement = s.replacement.model_copy(update={"compute_id": new_id})
                    else:
                        s.compute_id = new_id
                    result.events.append(
                        (
                            "Normal",
                            "Building",
                            f"building instance {new_id} (revision {action.revision})",
                        )
                    )
                elif isinstance(action, Delete):
                    await backend.call("delete", action.amphora_id)
                elif isinstance(action, Suspend):
                    await backend.call("suspend", action.amphora_id)
                elif isinstance(action, Resume):
                    # NotSuspendedError: it came back by itself, nothing left to do.
                    with contextlib.suppress(NotSuspendedError):
                        await backend.call("resume", action.amphora_id)
            except AmphoraComputeError as e:
                if e.reason in (
                    Reason.CIRCUIT_OPEN,
                    Reason.BACKEND_UNAVAILABLE,
                    Reason.TIMEOUT,
                    Reason.RATE_LIMITED,
                ):
                    self._backend_condition(s, tracked, e)
                if isinstance(action, Build):
                    await self._build_failed(tracked, s, e.reason, _user_message(e), now)
                    result.events.append(("Warning", "BuildFailed", _user_message(e)))
                else:
                    s.conditions = set_condition(
                        s.conditions,
                        type="Progressing",
                        status=True,
                        reason=e.reason,
                        message=f"{type(action).__name__.lower()} failed, retrying: {e.message}",
                        generation=generation,
                        now=stamp,
                    )
            except NotImplementedError as e:
                await self._build_failed(tracked, s, Reason.UNSUPPORTED_TYPE, str(e), now)
            except SecretNotFound as e:
                await self._build_failed(tracked, s, e.reason, str(e), now)
            except ValidationError as e:
                field_path, message = describe_validation_error(e)
                text = f"{spec_field_path(field_path)}: {message.split(': ', 1)[-1]}"
                await self._build_failed(tracked, s, Reason.INVALID_INPUT, text, now)

    async def _build_failed(
        self, tracked: Tracked, s: AmphoraStatus, reason: str, message: str, now: datetime
    ) -> None:
        delay = next_retry(
            s,
            now=now,
            retry_base=self.config.reconcile.retry_base,
            retry_max=self.config.reconcile.retry_max,
        )
        s.fault = message
        mark_failed(
            s,
            reason=reason,
            message=f"{message} (retry in {delay:.0f} s)",
            generation=tracked.body["metadata"].get("generation"),
            stamp=now_rfc3339(now),
        )

    async def _build_request(
        self, spec: AmphoraSpec, meta: dict[str, Any], revision: int
    ) -> BuildRequest:
        namespace, uid = meta["namespace"], meta["uid"]
        files: dict[str, bytes | str] = {}
        for item in spec.config_drive_files:
            if item.secret_ref is not None:
                files[item.path] = await self._kube(
                    self.kube.read_secret_key,
                    namespace,
                    item.secret_ref.name,
                    item.secret_ref.key,
                    f"spec.configDriveFiles[{item.path}].secretRef",
                )
            else:
                files[item.path] = item.content or ""
        user_data: bytes | str | None = None
        if spec.user_data is not None:
            if spec.user_data.secret_ref is not None:
                user_data = await self._kube(
                    self.kube.read_secret_key,
                    namespace,
                    spec.user_data.secret_ref.name,
                    spec.user_data.secret_ref.key,
                    "spec.userData.secretRef",
                )
            else:
                user_data = spec.user_data.content
        return BuildRequest(
            name=instance_name(uid, revision),
            amphora_type=AmphoraType(spec.type.value),
            amphora_flavor=spec.flavor,
            image_id=spec.image,
            keys=tuple(spec.keys),
            sec_groups=tuple(spec.security_groups),
            network_ids=tuple(spec.networks),
            config_drive_files=files,
            user_data=user_data,
            owner=owner_key(uid, revision),
            tags=tuple(spec.tags),
            availability_zone=spec.availability_zone,
            server_group=(
                ServerGroup(name=spec.server_group.name, policy=spec.server_group.policy)
                if spec.server_group is not None
                else None
            ),
        )

    async def _finalize_locked(self, tracked: Tracked) -> str | None:
        meta = tracked.body["metadata"]
        status = AmphoraStatus.model_validate(tracked.body.get("status") or {})
        try:
            spec = AmphoraSpec.model_validate(tracked.body.get("spec") or {})
        except ValidationError:
            return None  # it never passed validation, so nothing was ever built
        to_delete, present = plan_deletion(spec=spec, status=status, observation=Observation())
        if not to_delete and not present and spec.deletion_policy.value == "Orphan":
            if status.replacement is not None or status.retired:
                try:  # best effort: Orphan never waits for the backend
                    backend = self._resolve(tracked, spec)
                    observation = await self._observe(backend, meta["uid"], spec, status, None)
                    extras, _ = plan_deletion(spec=spec, status=status, observation=observation)
                    for amphora_id in extras:
                        await backend.call("delete", amphora_id)
                except Exception:
                    log.warning("Orphan: leftover instances not deleted", exc_info=True)
            if status.compute_id:
                self._event(
                    tracked,
                    "Normal",
                    "Orphaned",
                    f"instance {status.compute_id} left running (deletionPolicy Orphan)",
                )
            return None
        if spec.management_policy.value == "ObserveOnly":
            return None
        try:
            backend = self._resolve(tracked, spec)
            observation = await self._observe(backend, meta["uid"], spec, status, None)
            to_delete, present = plan_deletion(spec=spec, status=status, observation=observation)
            for amphora_id in to_delete:
                await backend.call("delete", amphora_id)
        except (UnknownProfileError, UnknownDriverError) as e:
            if not (status.compute_id or status.replacement or status.retired):
                return None  # no driver could ever have built anything for it
            return await self._deletion_blocked(tracked, status, "UnknownDriver", str(e))
        except AmphoraComputeError as e:
            return await self._deletion_blocked(tracked, status, e.reason, e.message)
        except Exception as e:  # the driver could not even start (credentials gone...)
            return await self._deletion_blocked(
                tracked, status, "DriverUnavailable", f"{type(e).__name__}: {e}"
            )
        if not present:
            if status.compute_id:
                self._event(tracked, "Normal", "Deleted", f"instance {status.compute_id} is gone")
            return None
        return await self._deletion_blocked(
            tracked,
            status,
            "Deleting",
            f"waiting for the backend to confirm {', '.join(present)} gone",
        )

    async def _deletion_blocked(
        self, tracked: Tracked, status: AmphoraStatus, reason: str, message: str
    ) -> str:
        text = (
            f"{message}; deletion waits (set spec.deletionPolicy: Orphan to release the "
            "Amphora and leave the instance)"
        )
        status.phase = Phase.DELETING
        generation = tracked.body["metadata"].get("generation")
        stamp = now_rfc3339(self.clock())
        status.conditions = set_condition(
            status.conditions,
            type="Ready",
            status=False,
            reason="Deleting",
            message=text,
            generation=generation,
            now=stamp,
        )
        status.conditions = set_condition(
            status.conditions,
            type="Progressing",
            status=True,
            reason=reason,
            message=text,
            generation=generation,
            now=stamp,
        )
        try:
            await self._write(tracked, status)
        except Exception:  # status is best effort while deleting; the wait reason is returned
            log.warning("status not written during deletion", exc_info=True)
        return text

    def close(self) -> None:
        self._kube_executor.shutdown(wait=False, cancel_futures=True)


def _newer(candidate: dict[str, Any], known: dict[str, Any]) -> bool:
    """Prefer the body with the higher resourceVersion (watch events can lag our own writes)."""
    try:
        return int(candidate["metadata"]["resourceVersion"]) >= int(
            known["metadata"]["resourceVersion"]
        )
    except (KeyError, ValueError):
        return True


def _intent_changed(before: AmphoraStatus, after: AmphoraStatus) -> bool:
    """Whether fields needed to recover after a crash changed (then they are written first)."""
    return (before.revision, before.replacement, before.retired, before.compute_id) != (
        after.revision,
        after.replacement,
        after.retired,
        after.compute_id,
    )


def _user_message(error: AmphoraComputeError) -> str:
    if error.field:
        return f"{spec_field_path(error.field)}: {error.message.split(': ', 1)[-1]}"
    return error.message
