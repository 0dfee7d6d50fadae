"""What a cloud operator sets up in Keystone and Glance before users come (through the APIs).

Runs in the project's venv with openstacksdk, as Keystone's bootstrap admin, against the box's
real Keystone and Glance: a project, a user with the ``member`` role and an application
credential; the catalog of compute, image and network endpoints; images with tags and owners.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import openstack.connection
from openstack.config.loader import OpenStackConfig

__all__ = ["IMAGES", "Identity", "ImageSpec", "admin_connection", "register", "upload_images"]

REGION = "RegionOne"
PROJECT = "amphora"
USER = "amphora"
#: The tag of the amphora images (Octavia's ``amp_image_tag`` convention).
AMPHORA_TAG = "amphora"


@dataclass(frozen=True)
class ImageSpec:
    """One image of the box: Nova's in-process image stub knows the same ids."""

    id: str
    name: str
    tags: tuple[str, ...]
    #: "project" (the amphora project) or "admin" (another project, shared publicly).
    owner: str


#: Uploaded in this order, a second apart, so ``created_at`` orders them. The first is Nova's
#: fixture image ``image1``; the others are ids of Nova's other fixture images.
IMAGES = (
    ImageSpec("155d900f-4e14-4e4c-a73d-069cbf4541e6", "cirros-base", (), "project"),
    ImageSpec("a2459075-d96c-40d5-893e-577ff92e721c", "amphora-old", (AMPHORA_TAG,), "project"),
    ImageSpec("76fa36fc-c930-4bf3-8c8a-ea2a2420deb6", "amphora-new", (AMPHORA_TAG,), "project"),
    ImageSpec("cedef40a-ed67-4d10-800e-17455edce175", "amphora-foreign", (AMPHORA_TAG,), "admin"),
)


@dataclass(frozen=True)
class Identity:
    """What the launcher created in Keystone, for clouds.yaml files and tests."""

    auth_url: str
    admin_password: str
    project_id: str
    admin_project_id: str
    user_password: str
    application_credential_id: str
    application_credential_secret: str


def admin_connection(auth_url: str, password: str, project: str = "admin") -> Any:
    """A connection as Keystone's bootstrap admin, scoped to ``project`` (a name)."""
    return _connect(
        {
            "auth": {
                "auth_url": auth_url,
                "username": "admin",
                "password": password,
                "project_name": project,
                "user_domain_name": "Default",
                "project_domain_name": "Default",
            },
            "region_name": REGION,
            "interface": "public",
            "identity_api_version": "3",
        }
    )


def _connect(cloud: dict[str, Any]) -> Any:
    config = OpenStackConfig(load_yaml_config=False, load_envvars=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Support for InfluxDB")
        region = config.get_one(**cloud)
    return openstack.connection.Connection(config=region)


def register(
    auth_url: str, admin_password: str, user_password: str, endpoints: dict[str, str]
) -> Identity:
    """Create the project, user, roles, application credential and catalog; return them."""
    admin = admin_connection(auth_url, admin_password)
    try:
        identity = admin.identity
        project = identity.create_project(name=PROJECT, domain_id="default")
        user = identity.create_user(
            name=USER, password=user_password, domain_id="default", default_project_id=project.id
        )
        roles = {r.name: r for r in identity.roles()}
        admin_user = identity.find_user("admin", domain_id="default")
        identity.assign_project_role_to_user(project, user, roles["member"])
        # The admin also administers the amphora project: tests read user_data and set quotas.
        identity.assign_project_role_to_user(project, admin_user, roles["admin"])
        for kind, url in endpoints.items():
            service = identity.create_service(name=_SERVICE_NAMES[kind], type=kind)
            for interface in ("public", "internal", "admin"):
                identity.create_endpoint(
                    service_id=service.id, interface=interface, url=url, region_id=REGION
                )
        admin_project = identity.find_project("admin", domain_id="default")
    finally:
        admin.close()
    user_conn = _connect(
        {
            "auth": {
                "auth_url": auth_url,
                "username": USER,
                "password": user_password,
                "project_id": project.id,
                "user_domain_name": "Default",
            },
            "region_name": REGION,
            "identity_api_version": "3",
        }
    )
    try:
        credential = user_conn.identity.create_application_credential(
            user=user_conn.current_user_id, name="amphora-operator"
        )
    finally:
        user_conn.close()
    return Identity(
        auth_url=auth_url,
        admin_password=admin_password,
        project_id=str(project.id),
        admin_project_id=str(admin_project.id),
        user_password=user_password,
        application_credential_id=str(credential.id),
        application_credential_secret=str(credential.secret),
    )


_SERVICE_NAMES = {"compute": "nova", "image": "glance", "network": "neutron"}


def upload_images(identity: Identity) -> list[dict[str, Any]]:
    """Upload IMAGES to Glance with their ids, tags and owners; return what Glance reports."""
    admin = admin_connection(identity.auth_url, identity.admin_password)
    owners = {"project": identity.project_id, "admin": identity.admin_project_id}
    made: list[dict[str, Any]] = []
    try:
        for index, spec in enumerate(IMAGES):
            if index:
                time.sleep(1.05)  # created_at has one-second resolution: keep the order real
            body = {
                "id": spec.id,
                "name": spec.name,
                "disk_format": "raw",
                "container_format": "bare",
                "tags": list(spec.tags),
                "owner": owners[spec.owner],
                "visibility": "private" if spec.owner == "project" else "public",
            }
            response = admin.image.post("/images", json=body)
            response.raise_for_status()
            upload = admin.image.put(
                f"/images/{spec.id}/file",
                data=f"not a real disk: {spec.name}\n".encode(),
                headers={"Content-Type": "application/octet-stream"},
            )
            upload.raise_for_status()
            shown = admin.image.get(f"/images/{spec.id}")
            shown.raise_for_status()
            made.append(shown.json())
    finally:
        admin.close()
    return made
