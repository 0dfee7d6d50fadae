"""Nova-specific behaviour of the driver, against the real Nova API of the box.

Each test builds with fresh names and owners and deletes what it built. What Nova received is
read back through the API (``OS-EXT-SRV-ATTR:user_data``, host, tags), not from the driver.
"""

from __future__ import annotations

import base64
import gzip
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import openstack.connection
import pytest
import yaml
from amphora_drivers.exceptions import (
    AmphoraBuildError,
    AmphoraComputeError,
    InstanceNotFoundError,
    NotSuspendedError,
    Reason,
)
from amphora_drivers.nova import NOVA_USER_DATA_LIMIT, ImageCandidate, NovaDriver, connect
from amphora_drivers.testing import make_ssh_public_key, wait_for
from amphora_drivers.types import AmphoraInstance, AmphoraState, AmphoraType, ServerGroup

from tests.fixtures.nova_box import SETTLE_TIMEOUT as TIMEOUT
from tests.fixtures.nova_box import NovaBoxInfo, make_driver
from tests.nova.cloud_init import cloud_config, mime_parts, written_files

pytestmark = pytest.mark.nova


def fresh(prefix: str = "nova") -> tuple[str, str]:
    token = uuid.uuid4().hex[:10]
    return f"{prefix}-{token}", str(uuid.uuid4())


def settled(driver: NovaDriver, amphora_id: str) -> AmphoraInstance:
    """Poll (bounded) until the server leaves BUILDING."""
    return wait_for(
        lambda: driver.get_amphora(amphora_id=amphora_id),
        lambda i: i.state is not AmphoraState.BUILDING,
        timeout=TIMEOUT,
        interval=0.1,
    )


def wait_state(driver: NovaDriver, amphora_id: str, state: AmphoraState) -> AmphoraInstance:
    return wait_for(
        lambda: driver.get_amphora(amphora_id=amphora_id),
        lambda i: i.state is state,
        timeout=TIMEOUT,
        interval=0.1,
    )


def user_data_in_nova(admin: openstack.connection.Connection, amphora_id: str) -> bytes:
    """The user data Nova stored, decoded (admins see it from microversion 2.3)."""
    encoded = admin.compute.get_server(amphora_id).user_data
    assert encoded is not None and len(encoded) <= NOVA_USER_DATA_LIMIT
    return base64.b64decode(encoded)


# -- config drive and user data ----------------------------------------------------------------


def test_five_files_at_the_size_limits_and_several_keys_reach_nova(
    driver: NovaDriver, admin: openstack.connection.Connection, cleanup: list[str]
) -> None:
    name, owner = fresh()
    # 10 KiB each, the spec's limit: random hex, so gzip helps only by half.
    files = {f"/etc/amphora/file{i}.conf": os.urandom(5 * 1024).hex().encode() for i in range(5)}
    keys = [make_ssh_public_key(c) for c in ("ops-a", "ops-b", "ops-c")]
    script = b"#!/bin/sh\necho 'h\xc3\xa9llo' > /run/amphora-booted\n"
    amphora_id = driver.build(
        name=name, owner=owner, config_drive_files=files, keys=keys, user_data=script
    )
    cleanup.append(amphora_id)
    assert wait_state(driver, amphora_id, AmphoraState.ACTIVE).addresses
    server = admin.compute.get_server(amphora_id)
    assert str(server.config_drive).lower() == "true"

    user_part, driver_part = mime_parts(user_data_in_nova(admin, amphora_id))
    assert user_part.get_content_type() == "text/plain"  # cloud-init sniffs '#!' itself
    assert user_part.get_payload(decode=True) == script  # byte for byte
    config = cloud_config(driver_part)
    assert written_files(config) == files
    assert config["ssh_authorized_keys"] == keys
    assert {"name": "list", "settings": ["append"]} in config["merge_how"]


def test_cloud_config_user_data_is_extended_not_replaced(
    driver: NovaDriver, admin: openstack.connection.Connection, cleanup: list[str]
) -> None:
    name, owner = fresh()
    user = b"#cloud-config\nwrite_files:\n- path: /etc/user.conf\n  content: mine\n"
    amphora_id = driver.build(
        name=name,
        owner=owner,
        config_drive_files={"/etc/amphora.conf": "ours"},
        user_data=user,
    )
    cleanup.append(amphora_id)
    user_part, driver_part = mime_parts(user_data_in_nova(admin, amphora_id))
    assert user_part.get_payload(decode=True) == user
    assert written_files(cloud_config(driver_part)) == {"/etc/amphora.conf": b"ours"}
    # cloud-init merges the second part into the first with list append: both files survive.
    assert cloud_config(driver_part)["merge_how"][0] == {"name": "list", "settings": ["append"]}


def test_without_user_data_nova_gets_one_cloud_config(
    driver: NovaDriver, admin: openstack.connection.Connection, cleanup: list[str]
) -> None:
    name, owner = fresh()
    key = make_ssh_public_key()
    amphora_id = driver.build(name=name, owner=owner, keys=[key])
    cleanup.append(amphora_id)
    assert cloud_config(user_data_in_nova(admin, amphora_id))["ssh_authorized_keys"] == [key]


def test_large_user_data_is_gzipped_whole_to_fit(
    driver: NovaDriver, admin: openstack.connection.Connection, cleanup: list[str]
) -> None:
    name, owner = fresh()
    # 60 KiB of shell: allowed by the spec, 80 KiB as base64, so only gzipped does it fit.
    script = b"#!/bin/sh\n" + b"echo 'configuring the amphora'\n" * (60 * 1024 // 31)
    amphora_id = driver.build(name=name, owner=owner, user_data=script)
    cleanup.append(amphora_id)
    assert gzip.decompress(user_data_in_nova(admin, amphora_id)) == script


def test_random_files_that_cannot_fit_are_refused_before_nova(
    driver: NovaDriver, admin: openstack.connection.Connection
) -> None:
    name, owner = fresh()
    files = {f"/etc/amphora/blob{i}": os.urandom(10 * 1024) for i in range(5)}
    before = len(list(admin.compute.servers()))
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, config_drive_files=files)
    assert (err.value.reason, err.value.retryable, err.value.field) == (
        Reason.INVALID_INPUT,
        False,
        "config_drive_files",
    )
    assert "65535" in str(err.value) and "/etc/amphora/blob0" in str(err.value)
    assert isinstance(err.value.__cause__, ValueError)
    assert driver.find(owner=owner) == []
    assert len(list(admin.compute.servers())) == before


# -- placement, quota, errors ---------------------------------------------------------------


def test_anti_affinity_overflow_surfaces_no_valid_host(
    nova_box: NovaBoxInfo,
    driver: NovaDriver,
    admin: openstack.connection.Connection,
    cleanup: list[str],
) -> None:
    """Two hosts, three members: the third ends in ERROR with Nova's "No valid host" fault.

    The third is built once the first two run, so the scheduler sees both hosts taken. (Built
    all at once, Nova may instead place two on one host, let the compute's late check refuse
    one, and end it in ERROR with "Exceeded maximum number of retries": ERROR with a fault too.)
    """
    assert len(nova_box.computes) == 2
    group = ServerGroup(name=f"lb-{uuid.uuid4().hex[:10]}", policy="anti-affinity")
    for index in range(2):
        name, owner = fresh(f"aa{index}")
        cleanup.append(driver.build(name=name, owner=owner, server_group=group))
    for amphora_id in cleanup:
        wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    name, owner = fresh("aa2")
    overflow = driver.build(name=name, owner=owner, server_group=group)
    cleanup.append(overflow)
    failed = settled(driver, overflow)
    assert failed.state is AmphoraState.ERROR and failed.raw_state.startswith("ERROR/")
    assert failed.fault is not None and "No valid host" in failed.fault
    hosts = {admin.compute.get_server(i).compute_host for i in cleanup[:2]}
    assert hosts == set(nova_box.computes)
    groups = [g for g in admin.compute.server_groups() if g.name == group.name]
    assert len(groups) == 1 and groups[0].policy == "anti-affinity"


def test_server_group_with_another_policy_is_refused(
    driver: NovaDriver, cleanup: list[str]
) -> None:
    group_name = f"lb-{uuid.uuid4().hex[:10]}"
    name, owner = fresh()
    cleanup.append(driver.build(name=name, owner=owner, server_group=ServerGroup(name=group_name)))
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(
            name=name, owner=owner, server_group=ServerGroup(name=group_name, policy="affinity")
        )
    assert (err.value.reason, err.value.field) == (Reason.INVALID_INPUT, "server_group")


def test_quota_exceeded_is_retryable(
    nova_box: NovaBoxInfo, admin: openstack.connection.Connection
) -> None:
    # A Keystone project of its own (Nova checks it exists), so the low quota bothers nobody.
    project = nova_box.box.new_project(f"quota-{uuid.uuid4().hex[:8]}")
    admin.compute.update_quota_set(project, instances=0)
    # Credentials as a Kubernetes Secret carries them: the clouds.yaml text.
    driver = NovaDriver(
        clouds_yaml_content=nova_box.clouds_yaml_content(project),
        default_flavor=nova_box.flavor_id,
        default_network_ids=[nova_box.network_id],
    )
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, image_id=nova_box.image_id)
    assert (err.value.reason, err.value.retryable) == (Reason.QUOTA_EXCEEDED, True)
    assert "Quota exceeded for instances" in str(err.value)
    assert isinstance(err.value.__cause__, openstack.exceptions.ForbiddenException)
    assert driver.find(owner=owner) == []
    driver.close()


@pytest.mark.parametrize(
    ("overrides", "reason", "field"),
    [
        ({"image_id": str(uuid.uuid4())}, Reason.IMAGE_NOT_FOUND, "image_id"),
        ({"amphora_flavor": "m1.missing"}, Reason.FLAVOR_NOT_FOUND, "amphora_flavor"),
        ({"availability_zone": "nowhere"}, Reason.INVALID_INPUT, "availability_zone"),
    ],
    ids=["image", "flavor", "availability-zone"],
)
def test_bad_references_are_not_retryable_and_name_the_field(
    driver: NovaDriver, overrides: dict[str, Any], reason: Reason, field: str
) -> None:
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, **overrides)
    assert (err.value.reason, err.value.retryable, err.value.field) == (reason, False, field)
    assert err.value.__cause__ is not None
    assert driver.find(owner=owner) == []


def test_flavor_by_name_and_user_tags(driver: NovaDriver, cleanup: list[str]) -> None:
    name, owner = fresh()
    amphora_id = driver.build(
        name=name, owner=owner, amphora_flavor="m1.small", tags=["lb:web", "tier=gold"]
    )
    cleanup.append(amphora_id)
    instance = driver.get_amphora(amphora_id=amphora_id)
    assert instance.tags == ("lb:web", "tier=gold")
    assert driver.connection.compute.get_server(amphora_id).flavor.original_name == "m1.small"


def test_reserved_tags_and_missing_networks_are_refused_before_nova(
    nova_box: NovaBoxInfo, driver: NovaDriver
) -> None:
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, tags=[f"amphora-owner:{uuid.uuid4()}"])
    assert (err.value.reason, err.value.field) == (Reason.INVALID_INPUT, "tags")
    bare = NovaDriver(clouds_yaml=str(nova_box.clouds_yaml), cloud=nova_box.cloud)
    with pytest.raises(AmphoraBuildError) as err:
        bare.build(name=name, owner=owner, amphora_flavor="1", image_id=nova_box.image_id)
    assert (err.value.reason, err.value.field) == (Reason.INVALID_INPUT, "network_ids")


def test_an_injected_connection_must_pin_the_microversion(nova_box: NovaBoxInfo) -> None:
    unpinned = connect(clouds_yaml_content=nova_box.clouds_yaml_content())
    with pytest.raises(AmphoraComputeError, match=r"microversion >= 2\.64") as err:
        NovaDriver(connection=unpinned).find()
    assert (err.value.reason, err.value.retryable) == (Reason.INVALID_INPUT, False)
    pinned = nova_box.connection()
    assert NovaDriver(connection=pinned).find(owner=str(uuid.uuid4())) == []
    unpinned.close()
    pinned.close()


def test_an_injected_image_lookup_replaces_glance(
    nova_box: NovaBoxInfo, cleanup: list[str], admin: openstack.connection.Connection
) -> None:
    """Callers may resolve names and tags themselves; the newest candidate still wins."""
    queries: list[tuple[str | None, str | None]] = []

    def lookup(*, name: str | None, tag: str | None) -> list[ImageCandidate]:
        queries.append((name, tag))
        if tag == "missing":
            return []
        return [
            ImageCandidate(id=str(uuid.uuid4()), created_at="2024-01-01T00:00:00Z"),
            ImageCandidate(id=nova_box.image_id, created_at="2025-06-01T00:00:00Z"),
            ImageCandidate(id=str(uuid.uuid4()), created_at="2023-01-01T00:00:00Z"),
        ]

    driver = make_driver(nova_box, image_lookup=lookup)
    for image_ref in ("tag:amphora", "amphora-haproxy"):
        name, owner = fresh()
        amphora_id = driver.build(name=name, owner=owner, image_id=image_ref)
        cleanup.append(amphora_id)
        assert admin.compute.get_server(amphora_id).image.id == nova_box.image_id
    assert queries == [(None, "amphora"), ("amphora-haproxy", None)]
    name, owner = fresh()
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, image_id="tag:missing")
    assert (err.value.reason, err.value.field) == (Reason.IMAGE_NOT_FOUND, "image_id")


def test_names_without_image_or_network_services_say_so(nova_box: NovaBoxInfo) -> None:
    """A cloud whose catalog has only Nova (here: Nova's endpoint given directly)."""
    nova_only = NovaDriver(
        clouds_yaml_content=yaml.safe_dump(
            {"clouds": {"c": {"auth_type": "none", "compute_endpoint_override": nova_box.endpoint}}}
        ),
        default_flavor=nova_box.flavor_id,
        default_image=nova_box.image_id,
        default_network_ids=[nova_box.network_id],
    )
    for field, overrides, reason, service in (
        ("image_id", {"image_id": "amphora-haproxy"}, Reason.IMAGE_NOT_FOUND, "image"),
        ("network_ids", {"network_ids": ["private"]}, Reason.NETWORK_NOT_FOUND, "network"),
    ):
        name, owner = fresh()
        with pytest.raises(AmphoraBuildError) as err:
            nova_only.build(name=name, owner=owner, **overrides)
        assert (err.value.reason, err.value.retryable, err.value.field) == (reason, False, field)
        assert f"no {service} service" in str(err.value)
    nova_only.close()


# -- lifecycle ------------------------------------------------------------------------------


def test_delete_of_a_server_already_gone(
    driver: NovaDriver, admin: openstack.connection.Connection
) -> None:
    name, owner = fresh()
    amphora_id = driver.build(name=name, owner=owner)
    admin.compute.delete_server(amphora_id)  # someone else deleted it
    wait_for(lambda: driver.find(amphora_id=amphora_id), lambda f: not f, timeout=TIMEOUT)
    driver.delete(amphora_id)
    driver.delete(str(uuid.uuid4()))  # never existed
    with pytest.raises(InstanceNotFoundError):
        driver.status(amphora_id)


def test_changed_since_reports_builds_and_deletions_only_after_the_time_asked(
    nova_box: NovaBoxInfo, driver: NovaDriver, admin: openstack.connection.Connection
) -> None:
    """What the operator's poller asks each round: one listing of what changed lately,
    deletions included (Nova drops a deleted server's tags, so it must not filter by tag), and
    nothing the driver did not build."""
    name, owner = fresh()
    before = datetime.now(UTC) - timedelta(seconds=2)
    amphora_id = driver.build(name=name, owner=owner)
    # Nova's changes-since compares updated_at, which a new server has only from its first
    # change on (scheduling): a build shows up once Nova has touched it.
    changed = wait_for(
        lambda: {i.id: i for i in driver.changed_since(before)},
        lambda found: amphora_id in found,
        timeout=TIMEOUT,
        interval=0.2,
    )
    assert changed[amphora_id].owner == owner
    assert changed[amphora_id].state in (AmphoraState.BUILDING, AmphoraState.ACTIVE)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    unmanaged = admin.compute.create_server(
        name=f"not-ours-{name}", flavor_id=nova_box.flavor_id, image_id=nova_box.image_id,
        networks=[{"uuid": nova_box.network_id}],
    )  # fmt: skip
    try:
        later = {i.id for i in driver.changed_since(datetime.now(UTC) + timedelta(seconds=60))}
        assert amphora_id not in later, "nothing changed after the time asked"
        driver.delete(amphora_id)
        wait_for(lambda: driver.find(amphora_id=amphora_id), lambda f: not f, timeout=TIMEOUT)
        after = {i.id: i for i in driver.changed_since(before)}
        # Listed as DELETED, or not at all: when Nova deems the compute service down (a busy
        # box), it deletes locally without touching updated_at, and changes-since misses it;
        # the operator's finalizer confirms by id and its resync lists everything.
        assert amphora_id not in after or after[amphora_id].state is AmphoraState.DELETED
        assert unmanaged.id not in after, "servers the driver did not build are left out"
    finally:
        admin.compute.delete_server(unmanaged.id, ignore_missing=True)


def test_find_owners_is_one_listing_that_nova_filters_by_owner_tags(
    driver: NovaDriver, cleanup: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of owner lookups costs Nova one call: tags-any filters on Nova's side, so a
    managed server of an owner not asked is not even returned."""
    built: dict[str, str] = {}
    for _ in range(3):
        name, owner = fresh()
        built[owner] = driver.build(name=name, owner=owner)
        cleanup.append(built[owner])
    asked, other = list(built)[:2], list(built)[2]
    listings: list[tuple[dict[str, Any], list[str]]] = []
    real = driver._compute.servers

    def servers(**query: Any) -> list[Any]:
        answer = list(real(**query))
        listings.append((query, [s.id for s in answer]))
        return answer

    monkeypatch.setattr(driver._compute, "servers", servers)
    nobody = fresh()[1]
    found = driver.find_owners([*asked, nobody])
    assert sorted((i.owner, i.id) for i in found) == sorted((o, built[o]) for o in asked)
    assert len(listings) == 1, "one call for all the owners"
    query, returned = listings[0]
    assert set(query["any_tags"].split(",")) == {f"amphora-owner:{o}" for o in (*asked, nobody)}
    assert built[other] not in returned, "Nova filtered by the owner tags, not the driver"


def test_resume_of_an_active_server_is_refused(driver: NovaDriver, cleanup: list[str]) -> None:
    name, owner = fresh()
    amphora_id = driver.build(name=name, owner=owner)
    cleanup.append(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    with pytest.raises(NotSuspendedError) as err:
        driver.resume(amphora_id)
    assert "ACTIVE" in str(err.value) and not err.value.retryable


@pytest.mark.parametrize(
    ("action", "raw"), [("stop_server", "SHUTOFF"), ("pause_server", "PAUSED")]
)
def test_servers_stopped_or_paused_outside_the_driver_resume(
    driver: NovaDriver,
    admin: openstack.connection.Connection,
    cleanup: list[str],
    action: str,
    raw: str,
) -> None:
    name, owner = fresh()
    amphora_id = driver.build(name=name, owner=owner)
    cleanup.append(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    getattr(admin.compute, action)(amphora_id)
    assert wait_state(driver, amphora_id, AmphoraState.SUSPENDED).raw_state == f"{raw}/None"
    driver.suspend(amphora_id)  # already down: a no-op
    driver.resume(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)


def test_adoption_after_a_crash_between_create_and_record(
    nova_box: NovaBoxInfo, admin: openstack.connection.Connection, cleanup: list[str]
) -> None:
    name, owner = fresh()
    crashed = make_driver(nova_box)
    request_kwargs: dict[str, Any] = {"name": name, "owner": owner}
    # The first operator created the server, then died before writing the id anywhere.
    first_id = crashed.build(**request_kwargs)
    cleanup.append(first_id)
    crashed.close()
    # A new process, a new driver, the same owner: it adopts instead of building twice.
    restarted = make_driver(nova_box)
    assert restarted.build(**request_kwargs) == first_id
    tagged = list(admin.compute.servers(tags=f"amphora-owner:{owner}"))
    assert [s.id for s in tagged] == [first_id]
    restarted.close()


# -- bare metal ---------------------------------------------------------------------------------


def test_bare_metal_amphora_lands_on_a_bare_metal_node_and_powers_off_to_suspend(
    nova_box: NovaBoxInfo,
    driver: NovaDriver,
    admin: openstack.connection.Connection,
    cleanup: list[str],
) -> None:
    name, owner = fresh("bm")
    amphora_id = driver.build(
        name=name,
        owner=owner,
        amphora_type="BareMetal",
        amphora_flavor="amphora-baremetal",  # private, found by name
    )
    cleanup.append(amphora_id)
    instance = wait_state(driver, amphora_id, AmphoraState.ACTIVE)
    assert instance.amphora_type is AmphoraType.BARE_METAL
    assert admin.compute.get_server(amphora_id).compute_host.startswith("baremetal")
    driver.suspend(amphora_id)  # Ironic cannot suspend: power off
    assert wait_state(driver, amphora_id, AmphoraState.SUSPENDED).raw_state == "SHUTOFF/None"
    driver.resume(amphora_id)
    wait_state(driver, amphora_id, AmphoraState.ACTIVE)


def test_flavor_must_match_the_amphora_type(nova_box: NovaBoxInfo, driver: NovaDriver) -> None:
    for amphora_type, flavor in (
        ("BareMetal", nova_box.flavor_id),
        ("VM", nova_box.baremetal_flavor_id),
    ):
        name, owner = fresh()
        with pytest.raises(AmphoraBuildError) as err:
            driver.build(name=name, owner=owner, amphora_type=amphora_type, amphora_flavor=flavor)
        assert (err.value.reason, err.value.field) == (Reason.INVALID_INPUT, "amphora_flavor")
        assert driver.find(owner=owner) == []


def test_bare_metal_flavors_can_be_named_explicitly(
    nova_box: NovaBoxInfo, cleanup: list[str]
) -> None:
    driver = make_driver(nova_box, bare_metal_flavors=["m1.small"])
    name, owner = fresh("bm")
    amphora_id = driver.build(
        name=name, owner=owner, amphora_type="BareMetal", amphora_flavor="m1.small"
    )
    cleanup.append(amphora_id)
    assert driver.get_amphora(amphora_id=amphora_id).amphora_type is AmphoraType.BARE_METAL
