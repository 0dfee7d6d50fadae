"""Carry out a plan's actions through a backend; report what failed as data, never decide.

The planner chose the actions; this module only performs them (reading referenced Secrets to
assemble a build request) and turns every exception into a :class:`~.planner.Failure` for the
planner to judge (:func:`~.planner.plan_failure`). The ``retryable`` flag of driver errors is
passed through untouched: it is the single rule for transient against terminal.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from amphora_drivers import (
    AmphoraComputeError,
    AmphoraType,
    BuildRequest,
    OwnerResource,
    Reason,
    ServerGroup,
)
from amphora_drivers.base import describe_validation_error
from pydantic import ValidationError

from amphora_operator.backends import Backend
from amphora_operator.kube import Gateway, SecretNotFound
from amphora_operator.model import API_VERSION, KIND, AmphoraSpec, AmphoraStatus, DeletionPolicy
from amphora_operator.planner import (
    Action,
    Build,
    Delete,
    Failure,
    Resume,
    Suspend,
    instance_name,
    owner_key,
)
from amphora_operator.tenancy import namespace_tag

__all__ = ["Effects", "failure_of", "owner_resource", "spec_field_path"]

log = logging.getLogger(__name__)

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
#: The breaker's countdown would change the message every second: status never carries it.
_COUNTDOWN = re.compile(r";? *next trial in \d+ s")


def owner_resource(meta: dict[str, Any]) -> OwnerResource:
    """The Amphora as its instances' owner, for drivers that can tie their lifetime to it."""
    return OwnerResource(
        api_version=API_VERSION, kind=KIND, name=meta["name"], uid=meta["uid"],
        namespace=meta["namespace"],
    )  # fmt: skip


def spec_field_path(driver_field: str | None) -> str:
    """Translate a driver input field (``keys.0``) to the spec path a user wrote (spec.keys)."""
    head = (driver_field or "spec").split(".", 1)[0]
    return _SPEC_FIELDS.get(head, "spec")


def failure_of(action: str, error: BaseException) -> Failure:
    """What a user should read about ``error``; ``retryable`` comes from the driver."""
    if isinstance(error, AmphoraComputeError):
        message = _COUNTDOWN.sub("", error.message)
        if error.field:
            message = f"{spec_field_path(error.field)}: {message.split(': ', 1)[-1]}"
        return Failure(action, error.reason, message, error.retryable)
    if isinstance(error, SecretNotFound):
        # Missing: the user may be about to create it (retried, Stalled after a few tries);
        # not consenting (no usable label) is terminal until the Secret or spec changes.
        return Failure(action, error.reason, str(error), error.retryable)
    if isinstance(error, NotImplementedError):
        return Failure(action, Reason.UNSUPPORTED_TYPE, str(error), False)
    if isinstance(error, ValidationError):
        field_path, message = describe_validation_error(error)
        text = f"{spec_field_path(field_path)}: {message.split(': ', 1)[-1]}"
        return Failure(action, Reason.INVALID_INPUT, text, False)
    return Failure(action, "DriverError", f"{type(error).__name__}: {error}", True)


class Effects:
    """Performs actions; records the ids that builds return in the status it is given."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def act(
        self,
        backend: Backend,
        meta: dict[str, Any],
        spec: AmphoraSpec,
        status: AmphoraStatus,
        actions: list[Action],
    ) -> list[Failure]:
        failures: list[Failure] = []
        for action in actions:
            done: dict[str, str] = {}
            try:
                if isinstance(action, Build):
                    request = await self.build_request(spec, meta, action.revision)
                    done["revision"] = str(action.revision)
                    new_id = await backend.build(request)
                    done["id"] = new_id
                    if action.replacement and status.replacement is not None:
                        status.replacement = status.replacement.model_copy(
                            update={"compute_id": new_id}
                        )
                    else:
                        status.compute_id = new_id
                elif isinstance(action, Delete):
                    await backend.delete(action.amphora_id)
                elif isinstance(action, Suspend):
                    await backend.suspend(action.amphora_id)
                elif isinstance(action, Resume):
                    await backend.resume(action.amphora_id)
            except (
                AmphoraComputeError,
                SecretNotFound,
                NotImplementedError,
                ValidationError,
            ) as e:
                failure = failure_of(type(action).__name__.lower(), e)
                failures.append(failure)
                done["failed"] = failure.reason
            # One line per mutating call: what was done to which Amphora (never spec content).
            log.info(
                "driver action",
                extra={
                    "action": type(action).__name__.lower(),
                    "amphora": f"{meta['namespace']}/{meta['name']}",
                    "profile": backend.profile,
                    **done,
                },
            )
        return failures

    async def build_request(
        self, spec: AmphoraSpec, meta: dict[str, Any], revision: int
    ) -> BuildRequest:
        namespace, uid = meta["namespace"], meta["uid"]
        files: dict[str, bytes | str] = {}
        for item in spec.config_drive_files:
            if item.secret_ref is not None:
                files[item.path] = await self.gateway.read_secret_key(
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
                user_data = await self.gateway.read_secret_key(
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
            # Only where deleting the Amphora must delete the instance: a platform that ties
            # lifetimes would otherwise take an Orphan's instance with it.
            owner_resource=(
                owner_resource(meta) if spec.deletion_policy is DeletionPolicy.DELETE else None
            ),
            tags=(*spec.tags, namespace_tag(namespace)),
            availability_zone=spec.availability_zone,
            server_group=(
                ServerGroup(
                    name=spec.server_group.name, policy=spec.server_group.policy, scope=namespace
                )
                if spec.server_group is not None
                else None
            ),
        )
