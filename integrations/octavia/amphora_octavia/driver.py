"""Octavia's ComputeBase on top of the Amphora API: each amphora is an ``Amphora`` resource.

Octavia loads this class by the entry point ``compute_amphora_k8s_driver`` in the group
``octavia.compute.drivers`` (``[controller_worker] compute_driver``). It talks only to the
Kubernetes API: the amphora-operator builds the instance (a Nova VM, a bare-metal server or a
Pod) and reports it in the Amphora's status, which this driver maps back to Octavia's words.

=========================  ===================================================================
Octavia call               Amphora API
=========================  ===================================================================
build                      a Secret ``<id>-boot`` (user data, config-drive files), then the
                           Amphora ``<id>`` referencing it, then the Secret's ownerReference
delete                     delete the Amphora (the operator removes the instance) and the
                           Secret; NotFound counts as deleted, as in Octavia's Nova driver
status / get_amphora       phase → ACTIVE/BUILD/ERROR/SHUTOFF/DELETED, first address →
                           lb_network_ip, status.fault → the second return value
create/delete_server_group an id that carries its policy; amphorae built with it get
                           ``spec.serverGroup`` (Nova server group, or Pod anti-affinity)
attach_network_or_port,    not supported: the Amphora API has no in-place network change
detach_port                (a changed spec.networks rebuilds the amphora); NotImplementedError
validate_flavor / _zone    flavor_map syntax, then a server-side dry-run create of an Amphora
=========================  ===================================================================
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO, TypeVar

import tenacity
import urllib3.exceptions
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from novaclient import exceptions as nova_exceptions
from octavia.common import clients, constants, exceptions
from octavia.common import data_models as models
from octavia.compute import compute_base
from oslo_config import cfg
from oslo_log import log as logging

from amphora_octavia import config, mapping
from amphora_octavia.mapping import PlanError, Settings

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
config.register(CONF)

_KEY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
#: What the Kubernetes client raises when the API cannot be reached or answers an error.
_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)
T = TypeVar("T")


@dataclass(frozen=True)
class ServerGroup:
    """What Octavia reads from create_server_group (``.id``)."""

    id: str
    name: str
    policy: str


def _describe(error: BaseException) -> str:
    """The API's own message (e.g. the CRD's validation message), never request bodies."""
    if isinstance(error, ApiException):
        try:
            message = json.loads(error.body or "{}").get("message")
        except (ValueError, AttributeError):
            message = None
        return f"{error.status} {error.reason}: {message or ''}".strip()
    return f"{type(error).__name__}: {error}"


def _api_client(kubeconfig: str | None, context: str | None) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    if kubeconfig:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    else:
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration
        )
    return k8s.ApiClient(configuration)


def settings_from(conf: cfg.ConfigOpts) -> Settings:
    opts = conf.amphora_k8s
    return Settings(
        namespace=opts.namespace,
        default_type=opts.default_type,
        default_driver=opts.default_driver,
        flavor_map=dict(opts.flavor_map),
        image_map=dict(opts.image_map),
        network_map=dict(opts.network_map),
    )


class AmphoraK8sComputeDriver(compute_base.ComputeBase):  # type: ignore[misc]
    """Amphorae as Amphora resources of amphora-operator."""

    def __init__(self) -> None:
        super().__init__()
        opts = CONF.amphora_k8s
        self.settings = settings_from(CONF)
        self._timeout = float(opts.request_timeout)
        self._key_source = str(opts.key_source)
        self._keys_dir = str(opts.ssh_public_keys_dir)
        self._client = _api_client(opts.kubeconfig, opts.context)
        self._custom = k8s.CustomObjectsApi(self._client)
        self._core = k8s.CoreV1Api(self._client)

    @property
    def _namespace(self) -> str:
        return self.settings.namespace

    # -- build ----------------------------------------------------------------------------------

    def build(
        self,
        name: str = "amphora_name",
        amphora_flavor: str | None = None,
        image_tag: str | None = None,
        image_owner: str | None = None,
        key_name: str | None = None,
        sec_groups: Sequence[str] | None = None,
        network_ids: Sequence[str] | None = None,
        port_ids: Sequence[str] | None = None,
        config_drive_files: Mapping[str, Any] | None = None,
        user_data: str | bytes | TextIO | BinaryIO | None = None,
        server_group_id: str | None = None,
        availability_zone: Mapping[str, Any] | None = None,
    ) -> str:
        """Create the Amphora (and its Secret); returns its name, which is the compute id."""
        compute_id = mapping.new_compute_id()
        try:
            plan = mapping.plan_build(
                self.settings,
                compute_id=compute_id,
                name=name,
                amphora_flavor=amphora_flavor,
                image_tag=image_tag,
                image_owner=image_owner,
                keys=self._public_keys(key_name),
                key_name=key_name,
                sec_groups=sec_groups,
                network_ids=network_ids,
                port_ids=port_ids,
                config_drive_files=config_drive_files,
                user_data=user_data,
                server_group_id=server_group_id,
                availability_zone=availability_zone,
                default_zone=CONF.nova.availability_zone,
            )
        except PlanError as e:
            LOG.error("Amphora %s cannot be built: %s", name, e)
            raise exceptions.ComputeBuildException(fault=str(e)) from e
        # The Secret first: the operator reads it as soon as it sees the Amphora.
        if plan.secret is not None:
            body: Any = plan.secret  # the client takes plain dicts as request bodies
            try:
                self._core.create_namespaced_secret(
                    self._namespace, body, _request_timeout=self._timeout
                )
            except _API_ERRORS as e:
                LOG.error("Creating the boot Secret of amphora %s failed: %s", name, _describe(e))
                raise exceptions.ComputeBuildException(fault=_describe(e)) from e
        try:
            created: dict[str, Any] = self._custom.create_namespaced_custom_object(  # type: ignore[assignment]
                mapping.GROUP,
                mapping.VERSION,
                self._namespace,
                mapping.PLURAL,
                plan.amphora,
                _request_timeout=self._timeout,
            )
        except _API_ERRORS as e:
            LOG.error("Creating Amphora %s for %s failed: %s", compute_id, name, _describe(e))
            if plan.secret is not None:
                self._delete_secret(compute_id)
            raise exceptions.ComputeBuildException(fault=_describe(e)) from e
        if plan.secret is not None:
            self._adopt_secret(compute_id, created)
        LOG.info("Amphora %s/%s created for %s", self._namespace, compute_id, name)
        return compute_id

    def _public_keys(self, key_name: str | None) -> list[str]:
        """The public keys ``key_name`` stands for (``[amphora_k8s] key_source``)."""
        if not key_name:
            return []
        if self._key_source == "nova":
            return [self._nova_public_key(key_name)]
        if not _KEY_NAME.match(key_name):
            raise PlanError(f"key_name {key_name!r}: not a plain file name")
        path = os.path.join(self._keys_dir, f"{key_name}.pub")
        try:
            with open(path, encoding="utf-8") as f:
                keys = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        except OSError as e:
            raise PlanError(
                f"key_name {key_name}: cannot read {path} ([amphora_k8s] ssh_public_keys_dir): "
                f"{e.strerror}"
            ) from e
        if not keys:
            raise PlanError(f"key_name {key_name}: {path} holds no public key")
        return keys

    @staticmethod
    def _nova_public_key(key_name: str) -> str:
        """The Nova keypair's public key, through Octavia's own Nova client and credentials."""
        nova = clients.NovaAuth.get_nova_client(
            service_name=CONF.nova.service_name,
            endpoint=CONF.nova.endpoint,
            region=CONF.nova.region_name,
            endpoint_type=CONF.nova.endpoint_type,
            insecure=CONF.nova.insecure,
            cacert=CONF.nova.ca_certificates_file,
        )
        try:
            return str(nova.keypairs.get(key_name).public_key).strip()
        except nova_exceptions.NotFound as e:
            raise PlanError(f"key_name {key_name}: Nova has no such keypair") from e
        except Exception as e:
            raise PlanError(f"key_name {key_name}: reading the Nova keypair failed: {e}") from e

    def _adopt_secret(self, compute_id: str, amphora: Mapping[str, Any]) -> None:
        """Make the Secret owned by the Amphora; on failure delete() still removes it by name."""
        patch = {"metadata": {"ownerReferences": [mapping.owner_reference(amphora)]}}
        try:
            self._core.patch_namespaced_secret(
                mapping.secret_name(compute_id),
                self._namespace,
                patch,
                _request_timeout=self._timeout,
            )
        except _API_ERRORS as e:
            LOG.warning(
                "Secret %s is not owned by its Amphora (%s); delete() removes it by name",
                mapping.secret_name(compute_id),
                _describe(e),
            )

    def _delete_secret(self, compute_id: str) -> None:
        try:
            self._core.delete_namespaced_secret(
                mapping.secret_name(compute_id), self._namespace, _request_timeout=self._timeout
            )
        except ApiException as e:
            if e.status != 404:
                LOG.warning("Deleting Secret %s failed: %s", mapping.secret_name(compute_id),
                            _describe(e))  # fmt: skip
        except _API_ERRORS as e:
            LOG.warning("Deleting Secret %s failed: %s", mapping.secret_name(compute_id),
                        _describe(e))  # fmt: skip

    # -- delete and observe ---------------------------------------------------------------------

    def delete(self, compute_id: str) -> None:
        """Delete the Amphora; the operator deletes the instance. NotFound is success."""
        try:
            self._custom.delete_namespaced_custom_object(
                mapping.GROUP,
                mapping.VERSION,
                self._namespace,
                mapping.PLURAL,
                compute_id,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            if e.status != 404:
                LOG.error("Deleting Amphora %s failed: %s", compute_id, _describe(e))
                raise exceptions.ComputeDeleteException(compute_msg=_describe(e)) from e
            LOG.warning("Amphora %s not found. Assuming already deleted.", compute_id)
        except _API_ERRORS as e:
            LOG.error("Deleting Amphora %s failed: %s", compute_id, _describe(e))
            raise exceptions.ComputeDeleteException(compute_msg=_describe(e)) from e
        self._delete_secret(compute_id)

    def status(self, compute_id: str) -> str:
        """UP when the Amphora is Ready, else DOWN; ComputeStatusException when unreadable."""
        try:
            amphora, _fault = self.get_amphora(compute_id)
        except Exception as e:
            LOG.exception("Error retrieving the status of Amphora %s.", compute_id)
            raise exceptions.ComputeStatusException() from e
        return str(constants.UP if amphora.status == constants.ACTIVE else constants.DOWN)

    def get_amphora(
        self, compute_id: str, management_network_id: str | None = None
    ) -> tuple[Any, str | None]:
        """Octavia's Amphora data model and the fault, like the Nova driver's.

        Transient API errors are retried ``[compute] max_retries`` times every
        ``retry_interval`` seconds (as the Nova driver does), then ComputeGetException; a
        missing Amphora is NotFound at once.
        """
        del management_network_id  # status.addresses has no per-network attribution
        amphora = self._retrying(lambda: self._read(compute_id))
        seen = mapping.observe(amphora)
        model = models.Amphora(
            compute_id=compute_id,
            status=seen.status,
            lb_network_ip=seen.lb_network_ip,
            cached_zone=seen.cached_zone,
            image_id=seen.image_id,
            compute_flavor=seen.compute_flavor,
        )
        return model, seen.fault

    def _read(self, compute_id: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self._custom.get_namespaced_custom_object(  # type: ignore[assignment]
                mapping.GROUP,
                mapping.VERSION,
                self._namespace,
                mapping.PLURAL,
                compute_id,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            if e.status == 404:
                raise exceptions.NotFound(resource="Amphora", id=compute_id) from e
            raise
        return found

    def _retrying(self, call: Callable[[], T]) -> T:
        try:
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_API_ERRORS),
                stop=tenacity.stop_after_attempt(CONF.compute.max_retries),
                wait=tenacity.wait_fixed(CONF.compute.retry_interval),
                reraise=True,
            ):
                with attempt:
                    return call()
        except _API_ERRORS as e:
            LOG.error("Error retrieving Amphora: %s", _describe(e))
            raise exceptions.ComputeGetException() from e
        raise AssertionError("unreachable: tenacity re-raises the last error")

    # -- server groups --------------------------------------------------------------------------

    def create_server_group(self, name: str, policy: str) -> ServerGroup:
        """A group id carrying ``policy``; Amphorae built with it get ``spec.serverGroup``.

        Nothing is created yet: the operator realises the group when its first member is
        built (a Nova server group of that name, or Pod (anti-)affinity for Containers).
        """
        try:
            group_id = mapping.server_group_id(policy)
        except PlanError as e:
            LOG.error("Server group %s: %s", name, e)
            raise exceptions.ServerGroupObjectCreateException() from e
        return ServerGroup(id=group_id, name=name, policy=policy)

    def delete_server_group(self, server_group_id: str) -> None:
        """Nothing to delete in Kubernetes: the group lives only in its members' specs."""
        try:
            mapping.server_group_policy(server_group_id)
        except PlanError:
            LOG.warning("Server group %s not found. Assuming already deleted.", server_group_id)

    # -- not supported by the Amphora API -------------------------------------------------------

    def attach_network_or_port(
        self,
        compute_id: str,
        network_id: str | None = None,
        ip_address: str | None = None,
        port_id: str | None = None,
    ) -> Any:
        raise NotImplementedError(
            "compute_amphora_k8s_driver cannot attach a network or port to amphora "
            f"{compute_id}: the Amphora API has no in-place network attachment (a change to "
            "spec.networks rebuilds the amphora)"
        )

    def detach_port(self, compute_id: str, port_id: str) -> None:
        raise NotImplementedError(
            f"compute_amphora_k8s_driver cannot detach port {port_id} from amphora "
            f"{compute_id}: the Amphora API has no in-place network attachment"
        )

    # -- validation -----------------------------------------------------------------------------

    def validate_flavor(self, flavor_id: str) -> None:
        """flavor_map syntax, then the Amphora API's own admission rules (a dry-run create).

        Whether the flavor exists in Nova or in the Container flavor table only the operator
        can tell; an unknown one fails the build with the operator's fault.
        """
        try:
            where = mapping.placement(self.settings, flavor_id)
        except PlanError as e:
            LOG.info("Flavor %s is not valid: %s", flavor_id, e)
            raise exceptions.InvalidSubresource(resource="Amphora flavor", id=flavor_id) from e
        spec: dict[str, Any] = {"type": where.type}
        if where.flavor:
            spec["flavor"] = where.flavor
        if where.driver:
            spec["driver"] = where.driver
        self._dry_run(spec, "Amphora flavor", flavor_id)

    def validate_availability_zone(self, availability_zone: str) -> None:
        """The Amphora API's admission rules for ``spec.availabilityZone`` (a dry-run create)."""
        self._dry_run({"availabilityZone": availability_zone}, "Amphora availability zone",
                      availability_zone)  # fmt: skip

    def _dry_run(self, spec: dict[str, Any], resource: str, value: str) -> None:
        probe = mapping.validation_probe(self.settings, **spec)
        try:
            self._custom.create_namespaced_custom_object(
                mapping.GROUP,
                mapping.VERSION,
                self._namespace,
                mapping.PLURAL,
                probe,
                dry_run="All",
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            if e.status in (400, 422):
                LOG.info("%s %s refused by the Amphora API: %s", resource, value, _describe(e))
                raise exceptions.InvalidSubresource(resource=resource, id=value) from e
            LOG.exception("The Amphora API failed validating %s %s", resource, value)
            raise
