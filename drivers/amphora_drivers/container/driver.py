"""The Container driver: each amphora a one-replica StatefulSet with Secrets, in one namespace.

What it creates and why: docs/drivers/container.md.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from amphora_drivers.base import AmphoraComputeDriver
from amphora_drivers.container.errors import translated
from amphora_drivers.container.manifests import (
    ANNOTATION_OWNER,
    BUILTIN_FLAVORS,
    DEFAULT_AUTHORIZED_KEYS_PATH,
    DEFAULT_HEALTH_PROBE,
    DEFAULT_USER_DATA_PATH,
    FIELD_MANAGER,
    LABEL_ID,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_OWNER,
    LABEL_VALUE,
    MANAGED_BY,
    NETWORK_REF,
    Flavor,
    HealthProbe,
    PodOptions,
    PodSecurity,
    build_manifests,
    owner_label,
    owner_reference,
    selector,
)
from amphora_drivers.container.observe import (
    Observation,
    event_time,
    last_change,
    malformed,
    observe_workload,
    probe_failure,
    tags,
)
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    DeleteFailed,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
    invalid,
)
from amphora_drivers.types import AmphoraInstance, AmphoraType, BuildRequest, OwnerResource

LOG = logging.getLogger(__name__)

# -- the driver -----------------------------------------------------------------------------


class ContainerDriver(AmphoraComputeDriver):
    """Container amphorae as one-replica StatefulSets with Secrets, in one namespace."""

    name: ClassVar[str] = "container"
    supported_types: ClassVar[frozenset[AmphoraType]] = frozenset({AmphoraType.CONTAINER})

    def __init__(
        self,
        *,
        namespace: str,
        api_client: k8s.ApiClient | None = None,
        flavors: Mapping[str, Flavor | Mapping[str, Any]] | None = None,
        default_flavor: str = "small",
        flavor_configmap: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        authorized_keys_path: str = DEFAULT_AUTHORIZED_KEYS_PATH,
        user_data_path: str = DEFAULT_USER_DATA_PATH,
        node_selector: Mapping[str, str] | None = None,
        tolerations: Sequence[Mapping[str, Any]] = (),
        image_pull_policy: str | None = None,
        health_probe: HealthProbe | Mapping[str, Any] | None = DEFAULT_HEALTH_PROBE,
        security: PodSecurity | Mapping[str, Any] | None = None,
        termination_grace_period_seconds: int | None = None,
    ) -> None:
        """Configure the driver; nothing is read from the environment except by the fallback.

        :param namespace: where every object of every amphora lives.
        :param api_client: the client to use; without one, in-cluster configuration is tried,
            then the default kubeconfig (the client is then owned and closed by :meth:`close`).
        :param flavors: flavor name → :class:`Flavor` (or its dict form); replaces
            :data:`BUILTIN_FLAVORS`.
        :param default_flavor: used when a build names no flavor.
        :param flavor_configmap: a ConfigMap in ``namespace`` whose entries override the table.
        :param connect_timeout: seconds to connect to the API server, per request.
        :param read_timeout: seconds to wait for its answer, per request.
        :param authorized_keys_path: where the ``keys`` appear in the container.
        :param user_data_path: where ``user_data`` appears (also in ``$AMPHORA_USER_DATA_FILE``).
        :param node_selector: Node labels every Pod requires (e.g. a pool of amphora Nodes).
        :param tolerations: Pod tolerations, as in a Pod spec (e.g. for a tainted pool).
        :param image_pull_policy: ``Always``, ``IfNotPresent`` or ``Never`` (default: the
            cluster's, IfNotPresent unless the tag is ``latest``).
        :param health_probe: the readiness probe (:class:`HealthProbe`; default the amphora
            agent's ``GET /1.0/info`` on 9443); None for no probe (Ready once running).
        :param security: the security context (:class:`PodSecurity`; default ``restricted``).
        :param termination_grace_period_seconds: how long a stopping amphora may take.
        """
        self.namespace = namespace
        try:
            self.pod_options = PodOptions.model_validate(
                {
                    "node_selector": dict(node_selector or {}),
                    "tolerations": tuple(dict(t) for t in tolerations),
                    "image_pull_policy": image_pull_policy,
                    "health_probe": health_probe,
                    "security": security if security is not None else PodSecurity(),
                    "termination_grace_period_seconds": termination_grace_period_seconds,
                }
            )
        except ValidationError as e:
            raise ValueError(f"container driver options: {e}") from e
        try:
            given = BUILTIN_FLAVORS if flavors is None else flavors
            table = {n: Flavor.model_validate(f) for n, f in given.items()}
        except ValidationError as e:
            raise ValueError(f"flavors: {e}") from e
        self.flavors: Mapping[str, Flavor] = table
        self.default_flavor = default_flavor
        self.flavor_configmap = flavor_configmap
        self.timeout = (connect_timeout, read_timeout)
        self.authorized_keys_path = authorized_keys_path
        self.user_data_path = user_data_path
        self._owns_client = api_client is None
        self.api_client = api_client if api_client is not None else _default_client()
        self._core = k8s.CoreV1Api(self.api_client)
        self._apps = k8s.AppsV1Api(self.api_client)
        self._networking = k8s.NetworkingV1Api(self.api_client)
        #: "name: problem" of the StatefulSets the last find() skipped as malformed.
        self.skipped: tuple[str, ...] = ()

    def follows_owner(self, owner: OwnerResource) -> bool:
        """Yes for an owner in this namespace: every object of its amphorae carries an
        ownerReference to it, so Kubernetes deletes them with it (a namespace deletion needs
        no operator). An owner elsewhere cannot be referenced (ownerReferences are
        namespace-local): the caller deletes those amphorae itself."""
        return owner.namespace == self.namespace

    def close(self) -> None:
        """Close the API client if the driver created it."""
        if self._owns_client:
            self.api_client.close()  # type: ignore[no-untyped-call]

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call the API and return its JSON answer (the raw JSON, not the client's models)."""
        response = method(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
        body: dict[str, Any] = json.loads(response.data or b"{}")
        return body

    # -- validation ------------------------------------------------------------------------

    def validate(self, request: BuildRequest) -> None:
        """Reject what Kubernetes would reject later, or what would collide in the container."""
        for index, network in enumerate(request.network_ids):
            if not NETWORK_REF.match(network):
                raise invalid(
                    f"network_ids[{index}]",
                    f"{network!r} is not a NetworkAttachmentDefinition reference "
                    "([namespace/]name[@interface], lower-case DNS names)",
                )
        for index, group in enumerate(request.sec_groups):
            if not LABEL_NAME.match(group):
                raise invalid(
                    f"sec_groups[{index}]",
                    f"{group!r} must be 1-63 letters, digits, '-', '_' or '.', starting and "
                    "ending with a letter or digit (it becomes a Pod label)",
                )
        if request.availability_zone is not None and not LABEL_VALUE.match(
            request.availability_zone
        ):
            raise invalid(
                "availability_zone",
                f"{request.availability_zone!r} is not a valid topology.kubernetes.io/zone value",
            )
        mounts = list(request.config_drive_files)
        if request.keys:
            mounts.append(self.authorized_keys_path)
        if request.user_data is not None:
            mounts.append(self.user_data_path)
        for path in mounts:
            clash = [o for o in mounts if o != path and o.startswith(path + "/")]
            if clash or mounts.count(path) > 1:
                raise invalid(
                    "config_drive_files",
                    f"{path} collides with {(clash or [path])[0]} (the keys are mounted at "
                    f"{self.authorized_keys_path}, user data at {self.user_data_path})",
                )

    def _flavor(self, name: str) -> Flavor:
        """The flavor called ``name``: the ConfigMap's entry if it has one, else the table's."""
        if self.flavor_configmap is not None:
            what = f"read flavor ConfigMap {self.namespace}/{self.flavor_configmap}"
            data: dict[str, str] = {}
            with translated(what, AmphoraBuildError):
                try:
                    data = self._call(
                        self._core.read_namespaced_config_map,
                        self.flavor_configmap,
                        self.namespace,
                    ).get("data", {})
                except ApiException as e:
                    if e.status != 404:  # a missing ConfigMap means no overrides
                        raise
            if name in data:
                try:
                    return Flavor.model_validate(yaml.safe_load(data[name]))
                except (ValidationError, yaml.YAMLError) as e:
                    raise AmphoraBuildError(
                        f"amphora_flavor: flavor {name!r} in ConfigMap "
                        f"{self.namespace}/{self.flavor_configmap} is invalid: {e}",
                        reason=Reason.FLAVOR_NOT_FOUND,
                        retryable=False,
                        field="amphora_flavor",
                    ) from e
            known = sorted({*self.flavors, *data})
        else:
            known = sorted(self.flavors)
        if name not in self.flavors:
            raise AmphoraBuildError(
                f"amphora_flavor: no flavor {name!r} (known: {', '.join(known)})",
                reason=Reason.FLAVOR_NOT_FOUND,
                retryable=False,
                field="amphora_flavor",
            )
        return self.flavors[name]

    # -- build -----------------------------------------------------------------------------

    def create(self, request: BuildRequest) -> str:
        flavor_name = request.amphora_flavor or self.default_flavor
        flavor = self._flavor(flavor_name)
        amphora_id = str(uuid.uuid4())
        owner = request.owner_resource
        owner_ref = (
            owner_reference(owner) if owner is not None and self.follows_owner(owner) else None
        )
        manifests = build_manifests(
            request,
            amphora_id=amphora_id,
            flavor_name=flavor_name,
            flavor=flavor,
            authorized_keys_path=self.authorized_keys_path,
            user_data_path=self.user_data_path,
            options=self.pod_options,
            owner_reference=owner_ref,
        )
        for kind, child in manifests.children:
            self._create_child(kind, child, request.owner)
        workload = self._create_workload(manifests.workload, request.owner)
        self._own_children(workload, manifests.children, owner_ref)
        built_id: str = workload["metadata"]["labels"][LABEL_ID]
        LOG.info(
            "amphora %s: StatefulSet %s/%s created (flavor %s)",
            built_id,
            self.namespace,
            workload["metadata"]["name"],
            flavor_name,
        )
        return built_id

    def _child_api(self, kind: str) -> tuple[Callable[..., Any], ...]:
        """(create, read, replace) of a child kind."""
        if kind == "Secret":
            core = self._core
            return (
                core.create_namespaced_secret,
                core.read_namespaced_secret,
                core.replace_namespaced_secret,
            )
        net = self._networking
        return (
            net.create_namespaced_network_policy,
            net.read_namespaced_network_policy,
            net.replace_namespaced_network_policy,
        )

    def _create_child(self, kind: str, body: dict[str, Any], owner: str | None) -> None:
        """Create a Secret or NetworkPolicy, taking over one a crashed build left behind."""
        create, read, replace = self._child_api(kind)
        name = body["metadata"]["name"]
        with translated(f"create {kind} {self.namespace}/{name}", AmphoraBuildError):
            try:
                self._call(create, self.namespace, body, field_manager=FIELD_MANAGER)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
            existing = self._call(read, name, self.namespace)
            self._check_takeover(kind, existing, owner)
            # Stale ownerReferences are dropped; _own_children() sets the new StatefulSet's.
            version = existing["metadata"]["resourceVersion"]
            body = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}
            self._call(replace, name, self.namespace, body, field_manager=FIELD_MANAGER)
            LOG.info("took over %s %s/%s left by an earlier build", kind, self.namespace, name)

    def _check_takeover(self, kind: str, existing: Mapping[str, Any], owner: str | None) -> None:
        """Allow reusing an object only when it is ours, alive and of the same owner."""
        metadata = existing.get("metadata", {})
        name = metadata.get("name")
        if metadata.get("deletionTimestamp"):
            raise AmphoraBuildError(
                f"{kind} {self.namespace}/{name} of an earlier amphora is still being deleted",
                reason=Reason.CONFLICT,
                retryable=True,
            )
        theirs = metadata.get("annotations", {}).get(ANNOTATION_OWNER)
        ours = metadata.get("labels", {}).get(LABEL_MANAGED_BY) == MANAGED_BY
        if owner is None or theirs != owner or not ours:
            holder = f"owner {theirs}" if ours and theirs else "something else"
            raise AmphoraBuildError(
                f"{kind} {self.namespace}/{name} already exists and belongs to {holder}; "
                "choose another amphora name",
                reason=Reason.CONFLICT,
                retryable=False,
                field="name",
            )

    def _create_workload(self, body: dict[str, Any], owner: str | None) -> dict[str, Any]:
        """Create the StatefulSet; on a name clash, return it if the same owner built it."""
        name = body["metadata"]["name"]
        with translated(f"create StatefulSet {self.namespace}/{name}", AmphoraBuildError):
            try:
                return self._call(
                    self._apps.create_namespaced_stateful_set,
                    self.namespace,
                    body,
                    field_manager=FIELD_MANAGER,
                )
            except ApiException as e:
                if e.status != 409:
                    raise
            existing = self._call(self._apps.read_namespaced_stateful_set, name, self.namespace)
        self._check_takeover("StatefulSet", existing, owner)
        return existing  # a concurrent build with the same owner won the race

    def _own_children(
        self,
        workload: Mapping[str, Any],
        children: Sequence[tuple[str, Mapping[str, Any]]],
        owner_ref: Mapping[str, Any] | None,
    ) -> None:
        """Make the StatefulSet the children's controller, so garbage collection follows it
        (beside the owner resource's reference, which they carry from their creation).

        Best effort: the amphora exists already, and delete() removes children by label too.
        """
        reference = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": workload["metadata"]["name"],
            "uid": workload["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        references = [reference] if owner_ref is None else [dict(owner_ref), reference]
        patch = {"metadata": {"ownerReferences": references}}
        for kind, child in children:
            name = child["metadata"]["name"]
            method = (
                self._core.patch_namespaced_secret
                if kind == "Secret"
                else self._networking.patch_namespaced_network_policy
            )
            try:
                with translated(f"set owner of {kind} {name}", AmphoraComputeError):
                    self._call(
                        method,
                        name,
                        self.namespace,
                        patch,
                        field_manager=FIELD_MANAGER,
                        _content_type="application/merge-patch+json",
                    )
            except AmphoraComputeError as e:
                LOG.warning("%s; delete() will still remove it by label", e.message)

    # -- observe ---------------------------------------------------------------------------

    def find(
        self,
        *,
        amphora_id: str | None = None,
        name: str | None = None,
        owner: str | None = None,
    ) -> list[AmphoraInstance]:
        labels = {LABEL_MANAGED_BY: MANAGED_BY}
        owner_value = owner_label(owner) if owner is not None else None
        for key, value in (
            (LABEL_ID, amphora_id),
            (LABEL_INSTANCE, name),
            (LABEL_OWNER, owner_value),
        ):
            if value is None:
                continue
            if not LABEL_VALUE.match(value):
                return []  # no object can carry it
            labels[key] = value
        query = selector(labels)
        with translated(f"list amphorae in {self.namespace}", AmphoraComputeError):
            workloads = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=query
            )["items"]
            if owner is not None:
                workloads = [
                    w
                    for w in workloads
                    if w["metadata"].get("annotations", {}).get(ANNOTATION_OWNER) == owner
                ]
            if not workloads:
                return []
            pods = self._call(self._core.list_namespaced_pod, self.namespace, label_selector=query)[
                "items"
            ]
            by_id: dict[str, list[dict[str, Any]]] = {}
            for pod in pods:
                pod_id = pod["metadata"].get("labels", {}).get(LABEL_ID, "")
                by_id.setdefault(pod_id, []).append(pod)
            found = []
            skipped = []
            for workload in sorted(workloads, key=lambda w: str(w["metadata"]["name"])):
                problem = malformed(workload)
                if problem is not None:
                    skipped.append(f"{workload['metadata']['name']}: {problem}")
                    continue
                amphora_id = workload["metadata"]["labels"][LABEL_ID]
                found.append(self._instance(workload, by_id.get(amphora_id, [])))
        self.skipped = tuple(skipped)
        for entry in skipped:
            # Someone else's object with our label (or one edited by hand): it must not stop
            # every other amphora of the namespace from being observed.
            LOG.warning("skipping malformed StatefulSet %s/%s", self.namespace, entry)
        return found

    def _instance(
        self, workload: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
    ) -> AmphoraInstance:
        metadata = workload["metadata"]
        failed_create = None
        wants_pod = workload["spec"].get("replicas", 1) > 0 and not metadata.get(
            "deletionTimestamp"
        )
        if wants_pod and not pods:
            failed_create = self._failed_create(workload)
        observed = observe_workload(workload, pods, failed_create)
        if observed.raw_state == "Running/NotReady":
            observed = self._with_probe_failure(observed, pods)
        annotations = metadata.get("annotations", {})
        return AmphoraInstance(
            id=metadata["labels"][LABEL_ID],
            name=metadata["labels"].get(LABEL_INSTANCE, metadata["name"]),
            amphora_type=AmphoraType.CONTAINER,
            state=observed.state,
            raw_state=observed.raw_state,
            addresses=observed.addresses,
            fault=observed.fault,
            owner=annotations.get(ANNOTATION_OWNER),
            tags=tags(workload),
        )

    def _with_probe_failure(
        self, observed: Observation, pods: Sequence[Mapping[str, Any]]
    ) -> Observation:
        """Running but not Ready: say why, from the kubelet's newest failed-probe Event."""
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        if not live:
            return observed
        pod = live[0]
        events = self._call(
            self._core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.uid={pod['metadata']['uid']},reason=Unhealthy",
        )["items"]
        return probe_failure(observed, pod, events)

    def _failed_create(self, workload: Mapping[str, Any]) -> str | None:
        """The newest FailedCreate event of the StatefulSet since it last changed, if any."""
        events = self._call(
            self._core.list_namespaced_event,
            self.namespace,
            field_selector=f"involvedObject.uid={workload['metadata']['uid']},reason=FailedCreate",
        )["items"]
        since = last_change(workload)
        dated = [(t, e) for e in events if (t := event_time(e)) is not None]
        recent = [(t, e) for t, e in dated if since is None or t >= since]
        if not recent:
            return None
        message: str = max(recent, key=lambda pair: pair[0])[1].get("message", "FailedCreate")
        return message

    def _workload(self, amphora_id: str, what: str) -> dict[str, Any]:
        """The StatefulSet of ``amphora_id``, refusing one that is being deleted."""
        if not LABEL_VALUE.match(amphora_id):
            raise InstanceNotFoundError(f"no amphora with id {amphora_id}")
        query = selector({LABEL_MANAGED_BY: MANAGED_BY, LABEL_ID: amphora_id})
        with translated(f"{what} amphora {amphora_id}", AmphoraComputeError):
            items = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=query
            )["items"]
        if not items:
            raise InstanceNotFoundError(f"no amphora with id {amphora_id}")
        workload: dict[str, Any] = items[0]
        if workload["metadata"].get("deletionTimestamp"):
            raise AmphoraComputeError(
                f"cannot {what} amphora {amphora_id}: it is being deleted",
                reason=Reason.CONFLICT,
                retryable=False,
            )
        return workload

    # -- lifecycle -------------------------------------------------------------------------

    def release(self, amphora_id: str) -> None:
        """Drop the owner label, annotation and ownerReference to the Amphora from the
        StatefulSet (one merge patch), so neither our collector nor Kubernetes' garbage
        collector takes it; its Pod, Secret and NetworkPolicy stay owned by the StatefulSet."""
        if not LABEL_VALUE.match(amphora_id):
            return
        query = selector({LABEL_MANAGED_BY: MANAGED_BY, LABEL_ID: amphora_id})
        patch = {
            "metadata": {
                "labels": {LABEL_OWNER: None},
                "annotations": {ANNOTATION_OWNER: None},
                "ownerReferences": None,
            }
        }
        with translated(f"release amphora {amphora_id}", AmphoraComputeError):
            workloads = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=query
            )["items"]
            for workload in workloads:
                try:
                    self._call(
                        self._apps.patch_namespaced_stateful_set,
                        workload["metadata"]["name"],
                        self.namespace,
                        patch,
                        field_manager=FIELD_MANAGER,
                        _content_type="application/merge-patch+json",
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
        LOG.info("amphora %s: released (owner label, annotation and reference removed)", amphora_id)

    def suspend(self, amphora_id: str) -> None:
        workload = self._workload(amphora_id, "suspend")
        if workload["spec"].get("replicas", 1) == 0:
            return
        self._scale(workload, [{"op": "replace", "path": "/spec/replicas", "value": 0}])
        LOG.info("amphora %s: suspended (replicas 0)", amphora_id)

    def resume(self, amphora_id: str) -> None:
        workload = self._workload(amphora_id, "resume")
        not_suspended = NotSuspendedError(f"amphora {amphora_id} is not suspended")
        if workload["spec"].get("replicas", 1) != 0:
            raise not_suspended
        # The test op makes check-and-set atomic: of two concurrent resumes, one is refused.
        patch = [
            {"op": "test", "path": "/spec/replicas", "value": 0},
            {"op": "replace", "path": "/spec/replicas", "value": 1},
        ]
        try:
            self._scale(workload, patch)
        except AmphoraComputeError as e:
            if e.reason == Reason.INVALID_INPUT:  # 422: the test op failed
                raise not_suspended from e
            raise
        LOG.info("amphora %s: resumed (replicas 1)", amphora_id)

    def _scale(self, workload: Mapping[str, Any], patch: list[dict[str, Any]]) -> None:
        """Apply a JSON patch to ``spec.replicas`` (status updates do not make it conflict)."""
        name = workload["metadata"]["name"]
        with translated(f"scale StatefulSet {self.namespace}/{name}", AmphoraComputeError):
            self._call(
                self._apps.patch_namespaced_stateful_set,
                name,
                self.namespace,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type="application/json-patch+json",
            )

    def delete(self, amphora_id: str) -> None:
        if not LABEL_VALUE.match(amphora_id):
            return  # no object can carry such an id: already gone
        query = selector({LABEL_MANAGED_BY: MANAGED_BY, LABEL_ID: amphora_id})
        with translated(f"delete amphora {amphora_id}", DeleteFailed):
            workloads = self._call(
                self._apps.list_namespaced_stateful_set, self.namespace, label_selector=query
            )["items"]
            for workload in workloads:
                if workload["metadata"].get("deletionTimestamp"):
                    continue
                try:
                    self._call(
                        self._apps.delete_namespaced_stateful_set,
                        workload["metadata"]["name"],
                        self.namespace,
                        propagation_policy="Foreground",
                    )
                except ApiException as e:
                    if e.status != 404:
                        raise
            self._call(
                self._core.delete_collection_namespaced_secret,
                self.namespace,
                label_selector=query,
            )
            self._call(
                self._networking.delete_collection_namespaced_network_policy,
                self.namespace,
                label_selector=query,
            )
        LOG.info("amphora %s: deletion requested", amphora_id)


def _default_client() -> k8s.ApiClient:
    """In-cluster configuration when running in a Pod, else the default kubeconfig."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        try:
            k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (k8s_config.ConfigException, OSError) as e:
            raise AmphoraComputeError(
                f"no Kubernetes configuration: not in a cluster and no kubeconfig ({e}); "
                "pass api_client",
                reason=Reason.BACKEND_UNAVAILABLE,
                retryable=False,
            ) from e
    return k8s.ApiClient(configuration)
