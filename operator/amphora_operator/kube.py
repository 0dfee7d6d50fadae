"""The operator's own Kubernetes calls: status writes, finalizers, Secret reads, Events and
the record of pending releases.

kopf owns watching; these calls go through the official client. :class:`KubeGateway` is
synchronous; :class:`ThreadedGateway` runs it in a bounded thread pool and is what the runtime
uses through the :class:`Gateway` protocol (unit tests pass a fake). Secret values are returned
to the caller and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, cast

from kubernetes import client

from amphora_operator.model import GROUP, PLURAL, VERSION
from amphora_operator.tenancy import USABLE_LABEL

__all__ = [
    "RELEASES_CONFIGMAP",
    "Gateway",
    "KubeGateway",
    "SecretNotFound",
    "ThreadedGateway",
    "WriteFenced",
]

T = TypeVar("T")

#: The ConfigMap (in the operator's namespace) naming instances left by ``deletionPolicy:
#: Orphan`` whose release is still to be done: garbage collection never takes them, whichever
#: replica leads and however often the operator restarts.
RELEASES_CONFIGMAP = "amphora-operator-releases"
_UPDATE_ATTEMPTS = 5

log = logging.getLogger(__name__)


class SecretNotFound(LookupError):
    """A referenced Secret or key is missing or unreadable; the message names the spec field."""

    def __init__(
        self, message: str, reason: str = "SecretNotFound", retryable: bool = True
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable


class KubeGateway:
    """Synchronous Kubernetes calls (run them in a thread)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        component: str = "amphora-operator",
        request_timeout: float = 30.0,
    ) -> None:
        """``request_timeout`` (seconds) bounds every call, so a partition from the apiserver
        never holds an Amphora's lock for ever."""
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.component = component
        self.request_timeout = request_timeout

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch ``status`` (None values remove fields); return the updated object."""
        result = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
            _request_timeout=self.request_timeout,
        )  # fmt: skip
        return cast(dict[str, Any], result)

    def add_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        """Set ``metadata.finalizers`` if the object is unchanged since ``resource_version``;
        return the updated object, or None when it changed, is gone or is being deleted."""
        return self._patch_finalizers("add", namespace, name, resource_version, finalizers)

    def remove_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        """Set ``metadata.finalizers`` to ``finalizers`` (ours dropped) if unchanged since
        ``resource_version``; None when it changed (re-read and retry) or is gone."""
        return self._patch_finalizers("replace", namespace, name, resource_version, finalizers)

    def _patch_finalizers(
        self, op: str, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        """One JSON patch guarded by a resourceVersion test: a concurrent change (409/422) or
        a deleted object (404) gives None instead of overwriting someone else's finalizers."""
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": op, "path": "/metadata/finalizers", "value": finalizers},
        ]
        try:
            result = self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, patch,
                _content_type="application/json-patch+json", _request_timeout=self.request_timeout,
            )  # fmt: skip
        except client.ApiException as e:
            if e.status in (404, 409, 422):
                return None
            raise
        return cast(dict[str, Any], result)

    def list_amphorae(self) -> list[dict[str, Any]]:
        """Every Amphora of the cluster, read from the apiserver (not a cache): what garbage
        collection confirms its verdicts with."""
        result = self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL, _request_timeout=self.request_timeout
        )
        return cast(list[dict[str, Any]], cast(dict[str, Any], result)["items"])

    def read_releases(self, namespace: str) -> dict[str, str]:
        """The pending releases recorded in ``namespace`` (instance id -> record); none when
        the ConfigMap does not exist. Any other failure raises: no verdict without it."""
        try:
            config_map = self.core.read_namespaced_config_map(
                RELEASES_CONFIGMAP, namespace, _request_timeout=self.request_timeout
            )
        except client.ApiException as e:
            if e.status == 404:
                return {}
            raise
        return dict(config_map.data or {})

    def update_releases(
        self, namespace: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> None:
        """Read, ``change`` and write the pending releases (compare-and-swap on the
        resourceVersion, read again on a conflict); raises when it could not be written."""
        for _ in range(_UPDATE_ATTEMPTS):
            try:
                current = self.core.read_namespaced_config_map(
                    RELEASES_CONFIGMAP, namespace, _request_timeout=self.request_timeout
                )
            except client.ApiException as e:
                if e.status != 404:
                    raise
                current = None
            data = dict((current.data if current is not None else None) or {})
            wanted = change(dict(data))
            if wanted == data:
                return
            try:
                if current is None:
                    self.core.create_namespaced_config_map(
                        namespace,
                        client.V1ConfigMap(
                            metadata=client.V1ObjectMeta(name=RELEASES_CONFIGMAP), data=wanted
                        ),
                        _request_timeout=self.request_timeout,
                    )
                else:
                    current.data = wanted
                    self.core.replace_namespaced_config_map(
                        RELEASES_CONFIGMAP, namespace, current,
                        _request_timeout=self.request_timeout,
                    )  # fmt: skip
                return
            except client.ApiException as e:
                if e.status != 409:  # 409: changed or created meanwhile; read it again
                    raise
        raise RuntimeError(f"{RELEASES_CONFIGMAP}: {_UPDATE_ATTEMPTS} write conflicts in a row")

    def read_secret_key(self, namespace: str, ref_name: str, key: str, field: str) -> bytes:
        """Return the decoded value of one Secret key; SecretNotFound names ``field``."""
        try:
            secret = self.core.read_namespaced_secret(
                ref_name, namespace, _request_timeout=self.request_timeout
            )
        except client.ApiException as e:
            if e.status == 404:
                raise SecretNotFound(f"{field}: Secret {ref_name!r} not found") from e
            if e.status == 403:
                raise SecretNotFound(
                    f"{field}: the operator may not read Secrets in namespace {namespace!r}; "
                    "bind it the amphora-operator-secret-refs role (examples/tenant-rbac.yaml)",
                    reason="SecretForbidden",
                ) from e
            raise
        labels = (secret.metadata.labels if secret.metadata else None) or {}
        if labels.get(USABLE_LABEL) != "true":
            raise SecretNotFound(
                f"{field}: Secret {ref_name!r} does not consent to be read by the operator: "
                f'label it {USABLE_LABEL}="true" to allow Amphorae to use it',
                reason="SecretNotConsented",
                retryable=False,
            )
        data = secret.data or {}
        if key not in data:
            raise SecretNotFound(f"{field}: Secret {ref_name!r} has no key {key!r}")
        return base64.b64decode(data[key])

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on the Amphora, or on the object ``body`` names with its
        ``apiVersion`` and ``kind`` (best effort: failures are logged only)."""
        meta = body.get("metadata", {})
        now = datetime.now(UTC)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta.get('name', 'amphora')}."),
            involved_object=client.V1ObjectReference(
                api_version=body.get("apiVersion", f"{GROUP}/{VERSION}"),
                kind=body.get("kind", "Amphora"),
                name=meta.get("name"),
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
                resource_version=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            first_timestamp=now,
            last_timestamp=now,
            count=1,
            source=client.V1EventSource(component=self.component),
            reporting_component=self.component,
        )
        try:
            self.core.create_namespaced_event(
                meta.get("namespace"), event, _request_timeout=self.request_timeout
            )
        except client.ApiException as e:
            log.warning("event not recorded", extra={"reason": reason, "status": e.status})


class Gateway(Protocol):
    """The Kubernetes calls the runtime makes, as coroutines (see :class:`ThreadedGateway`)."""

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]: ...

    async def add_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None: ...

    async def remove_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None: ...

    async def read_secret_key(
        self, namespace: str, ref_name: str, key: str, field: str
    ) -> bytes: ...

    async def list_amphorae(self) -> list[dict[str, Any]]: ...

    async def read_releases(self, namespace: str) -> dict[str, str]: ...

    async def update_releases(
        self, namespace: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> None: ...

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Fire and forget (best effort)."""


class WriteFenced(RuntimeError):
    """The fence refused a Kubernetes write: this replica may no longer act, and a paused
    leader's stale status must not overwrite what the next leader wrote."""


class ThreadedGateway:
    """:class:`KubeGateway` in a bounded thread pool, so the event loop never blocks.

    ``may_act`` fences every write the way :class:`~.backends.Backend` fences driver calls:
    asked in the worker thread right before the request (see leader.py).
    """

    def __init__(
        self, kube: KubeGateway, threads: int, may_act: Callable[[], bool] = lambda: True
    ) -> None:
        self.kube = kube
        self.may_act = may_act
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _write(self, what: str, fn: Callable[[], T]) -> T:
        return await self._run(lambda: self._fenced(what, fn))

    def _fenced(self, what: str, fn: Callable[[], T]) -> T:
        if not self.may_act():
            raise WriteFenced(f"{what} refused: this replica no longer holds the lease")
        return fn()

    async def patch_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        return await self._write(
            "status write", lambda: self.kube.patch_status(namespace, name, status)
        )

    async def add_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        return await self._write(
            "finalizer write",
            lambda: self.kube.add_finalizer(namespace, name, resource_version, finalizers),
        )

    async def remove_finalizer(
        self, namespace: str, name: str, resource_version: str, finalizers: list[str]
    ) -> dict[str, Any] | None:
        return await self._write(
            "finalizer write",
            lambda: self.kube.remove_finalizer(namespace, name, resource_version, finalizers),
        )

    async def read_secret_key(self, namespace: str, ref_name: str, key: str, field: str) -> bytes:
        return await self._run(lambda: self.kube.read_secret_key(namespace, ref_name, key, field))

    async def list_amphorae(self) -> list[dict[str, Any]]:
        return await self._run(self.kube.list_amphorae)

    async def read_releases(self, namespace: str) -> dict[str, str]:
        return await self._run(lambda: self.kube.read_releases(namespace))

    async def update_releases(
        self, namespace: str, change: Callable[[dict[str, str]], dict[str, str]]
    ) -> None:
        await self._write("releases write", lambda: self.kube.update_releases(namespace, change))

    def post_event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        def post() -> None:
            if self.may_act():
                self.kube.post_event(body, type_, reason, message)

        self.executor.submit(post)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
