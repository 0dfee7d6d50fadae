"""The Nova driver against the box's real Keystone and Glance and its Neutron stand-in.

Every driver here reads a clouds.yaml as a user writes one (auth_url, password or application
credential, region, interface) and finds Nova, Glance and Neutron in Keystone's catalog.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import openstack.connection
import pytest
import yaml
from amphora_devtools import cloud_setup
from amphora_drivers.exceptions import AmphoraBuildError, AmphoraComputeError, Reason
from amphora_drivers.nova import NovaDriver
from amphora_drivers.testing import wait_for
from amphora_drivers.types import AmphoraState

from tests.fixtures.nova_box import SETTLE_TIMEOUT as TIMEOUT
from tests.fixtures.nova_box import NovaBoxInfo, make_driver

pytestmark = pytest.mark.nova


def fresh() -> tuple[str, str]:
    return f"cloud-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())


def active(driver: NovaDriver, amphora_id: str) -> None:
    state = wait_for(
        lambda: driver.status(amphora_id),
        lambda s: s is not AmphoraState.BUILDING,
        timeout=TIMEOUT,
    )
    assert state is AmphoraState.ACTIVE


def image_named(nova_box: NovaBoxInfo, name: str) -> dict[str, Any]:
    return next(i for i in nova_box.images if i["name"] == name)


# -- Keystone -----------------------------------------------------------------------------------


def test_the_clouds_yaml_is_what_a_user_writes_and_endpoints_come_from_the_catalog(
    nova_box: NovaBoxInfo, driver: NovaDriver
) -> None:
    cloud = yaml.safe_load(nova_box.clouds_yaml.read_text())["clouds"][nova_box.cloud]
    assert set(cloud) == {"auth", "region_name", "interface"}
    assert set(cloud["auth"]) == {
        "auth_url",
        "username",
        "password",
        "project_id",
        "user_domain_name",
    }
    conn = driver.connection
    catalog = {entry["type"] for entry in conn.service_catalog}
    assert {"identity", "compute", "image", "network"} <= catalog
    assert conn.compute.get_endpoint().rstrip("/").endswith("/v2.1")
    assert conn.current_project_id == nova_box.project_id


def test_an_application_credential_builds_like_a_password(
    nova_box: NovaBoxInfo, cleanup: list[str]
) -> None:
    driver = make_driver(nova_box, cloud=nova_box.appcred_cloud)
    name, owner = fresh()
    amphora_id = driver.build(name=name, owner=owner)
    cleanup.append(amphora_id)
    active(driver, amphora_id)
    assert [i.id for i in driver.find(owner=owner)] == [amphora_id]
    driver.close()


def test_a_wrong_password_is_one_terminal_unauthorized_error(nova_box: NovaBoxInfo) -> None:
    document = yaml.safe_load(nova_box.clouds_yaml_content())
    document["clouds"][nova_box.cloud]["auth"]["password"] = "not-the-password"
    driver = NovaDriver(
        clouds_yaml_content=yaml.safe_dump(document),
        cloud=nova_box.cloud,
        default_flavor=nova_box.flavor_id,
        default_image=nova_box.image_id,
        default_network_ids=[nova_box.network_id],
    )
    name, owner = fresh()
    # build() looks for an existing instance of the owner first: that call meets the 401.
    with pytest.raises(AmphoraComputeError) as build:
        driver.build(name=name, owner=owner)
    with pytest.raises(AmphoraComputeError) as find:
        driver.find(owner=owner)
    for error in (build.value, find.value):
        assert (error.reason, error.retryable) == (Reason.UNAUTHORIZED, False)
        assert "credentials" in error.message
        assert "not-the-password" not in error.message
    driver.close()
    assert nova_box.box.problem() is None  # Keystone shrugged it off


def test_a_token_revoked_mid_run_is_replaced_without_a_failed_call(
    nova_box: NovaBoxInfo,
    driver: NovaDriver,
    admin: openstack.connection.Connection,
    cleanup: list[str],
) -> None:
    name, owner = fresh()
    first = driver.build(name=name, owner=owner)
    cleanup.append(first)
    token = driver.connection.auth_token
    revoked = admin.identity.delete("/auth/tokens", headers={"X-Subject-Token": token})
    assert revoked.status_code == 204
    # Nova's auth_token middleware caches validations for 5 s in the box: then it asks again.
    time.sleep(5.5)
    active(driver, first)  # Nova answers 401, keystoneauth fetches a new token, retries once
    name, owner = fresh()
    second = driver.build(name=name, owner=owner)
    cleanup.append(second)
    active(driver, second)
    assert driver.connection.auth_token != token


def test_token_expiry_during_a_run_renews_the_token_without_a_failed_call(
    nova_box: NovaBoxInfo, driver: NovaDriver, cleanup: list[str]
) -> None:
    """The box's tokens live 135 s; keystoneauth renews a token with less than 120 s left."""
    name, owner = fresh()
    first = driver.build(name=name, owner=owner)
    cleanup.append(first)
    token = driver.connection.auth_token
    session = driver.connection.session
    expires = session.auth.get_access(session).expires
    lifetime = expires.timestamp() - time.time()
    assert lifetime <= nova_box.box.token_expiration
    deadline = time.monotonic() + lifetime - 119  # this token is then "about to expire"
    while time.monotonic() < deadline:
        assert driver.status(first) in (AmphoraState.BUILDING, AmphoraState.ACTIVE)
        time.sleep(1)
    name, owner = fresh()
    second = driver.build(name=name, owner=owner)
    cleanup.append(second)
    active(driver, second)
    assert driver.connection.auth_token != token


# -- Glance -------------------------------------------------------------------------------------


def test_images_by_id_by_name_and_by_tag_newest_first(
    nova_box: NovaBoxInfo, admin: openstack.connection.Connection, cleanup: list[str]
) -> None:
    everyone = make_driver(nova_box)
    own = make_driver(nova_box, image_owner=nova_box.project_id)
    newest_public = image_named(nova_box, "amphora-foreign")
    newest_own = image_named(nova_box, "amphora-new")
    assert newest_public["owner"] != nova_box.project_id
    assert newest_own["created_at"] > image_named(nova_box, "amphora-old")["created_at"]
    cases = [
        (everyone, nova_box.image_id, nova_box.image_id),
        (everyone, "amphora-old", image_named(nova_box, "amphora-old")["id"]),
        (everyone, f"tag:{cloud_setup.AMPHORA_TAG}", newest_public["id"]),
        (own, f"tag:{cloud_setup.AMPHORA_TAG}", newest_own["id"]),
    ]
    for driver, ref, expected in cases:
        name, owner = fresh()
        amphora_id = driver.build(name=name, owner=owner, image_id=ref)
        cleanup.append(amphora_id)
        assert admin.compute.get_server(amphora_id).image.id == expected, ref
    everyone.close()
    own.close()


@pytest.mark.parametrize("ref", ["tag:no-such-tag", "no-such-image"])
def test_an_image_name_or_tag_nothing_matches_is_terminal_and_named(
    driver: NovaDriver, ref: str
) -> None:
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, image_id=ref)
    assert (err.value.reason, err.value.retryable, err.value.field) == (
        Reason.IMAGE_NOT_FOUND,
        False,
        "image_id",
    )
    assert ref.removeprefix("tag:") in err.value.message
    assert driver.find(owner=owner) == []


# -- Neutron (stand-in) -------------------------------------------------------------------------


def test_networks_and_security_groups_by_name_and_by_id(
    nova_box: NovaBoxInfo,
    driver: NovaDriver,
    admin: openstack.connection.Connection,
    cleanup: list[str],
) -> None:
    for network, group in (
        (nova_box.network_name, nova_box.security_group_name),
        (nova_box.network_id, nova_box.security_group_id),
    ):
        name, owner = fresh()
        amphora_id = driver.build(name=name, owner=owner, network_ids=[network], sec_groups=[group])
        cleanup.append(amphora_id)
        active(driver, amphora_id)
        server = admin.compute.get_server(amphora_id)
        assert {g["name"] for g in server.security_groups or []} == {nova_box.security_group_name}
        assert driver.get_amphora(amphora_id=amphora_id).addresses


@pytest.mark.parametrize(
    ("overrides", "reason", "field", "named"),
    [
        ({"network_ids": ["no-such-net"]}, Reason.NETWORK_NOT_FOUND, "network_ids", "no-such-net"),
        (
            {"network_ids": ["3f1c0a52-0000-4000-8000-000000000000"]},
            Reason.NETWORK_NOT_FOUND,
            "network_ids",
            "3f1c0a52-0000-4000-8000-000000000000",
        ),
        ({"sec_groups": ["no-such-group"]}, Reason.INVALID_INPUT, "sec_groups", "no-such-group"),
        (
            {"sec_groups": ["9e0d7c1a-0000-4000-8000-000000000000"]},
            Reason.INVALID_INPUT,
            "sec_groups",
            "9e0d7c1a-0000-4000-8000-000000000000",
        ),
    ],
    ids=["network-name", "network-id", "group-name", "group-id"],
)
def test_unknown_networks_and_security_groups_are_terminal_and_named(
    driver: NovaDriver, overrides: dict[str, Any], reason: Reason, field: str, named: str
) -> None:
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, **overrides)
    assert (err.value.reason, err.value.retryable, err.value.field) == (reason, False, field)
    assert named in err.value.message
    assert driver.find(owner=owner) == []


def test_the_neutron_stand_in_answers_unknown_ids_like_neutron(
    nova_box: NovaBoxInfo, admin: openstack.connection.Connection
) -> None:
    missing = str(uuid.uuid4())
    for path, kind in (
        (f"/networks/{missing}", "NetworkNotFound"),
        (f"/security-groups/{missing}", "SecurityGroupNotFound"),
    ):
        response = admin.network.get(path)
        assert response.status_code == 404
        assert response.json()["NeutronError"]["type"] == kind
        assert missing in response.json()["NeutronError"]["message"]
    listed = admin.network.get(f"/networks?name={nova_box.network_name}").json()["networks"]
    assert [n["id"] for n in listed] == [nova_box.network_id]
