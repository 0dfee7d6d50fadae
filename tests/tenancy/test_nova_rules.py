"""The Nova driver's tenancy options against the real Nova API of the box (and its Neutron
stand-in, which resolves names): reserved and management networks, allow-lists of networks
and security groups compared by id whichever way they are written, and server groups scoped
by name and deleted when their last member is gone."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import openstack.connection
import pytest
from amphora_drivers.exceptions import AmphoraBuildError
from amphora_drivers.nova import NovaDriver
from amphora_drivers.nova.driver import NOT_ALLOWED
from amphora_drivers.testing import wait_for
from amphora_drivers.types import AmphoraState, ServerGroup

from tests.fixtures.nova_box import NovaBoxInfo

pytestmark = pytest.mark.nova
TIMEOUT = 30.0


def fresh(prefix: str) -> tuple[str, str]:
    return f"{prefix}-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())


@pytest.fixture
def make(nova_box: NovaBoxInfo) -> Iterator[Any]:
    """Drivers with a private managed tag; what they built is deleted and confirmed gone."""
    made: list[tuple[NovaDriver, list[str]]] = []
    tag = f"tenancy-{uuid.uuid4().hex[:8]}"

    def build(**options: Any) -> tuple[NovaDriver, list[str]]:
        driver = NovaDriver(
            clouds_yaml=str(nova_box.clouds_yaml), cloud=nova_box.cloud, managed_tag=tag,
            default_flavor=nova_box.flavor_id, default_image=nova_box.image_id,
            api_timeout=30, **options,
        )  # fmt: skip
        made.append((driver, []))
        return made[-1]

    yield build
    for driver, ids in made:
        for amphora_id in ids:
            driver.delete(amphora_id)
        for amphora_id in ids:
            wait_for(partial(driver.find, amphora_id=amphora_id), lambda f: not f, timeout=TIMEOUT)
        driver.close()


@pytest.fixture
def admin(nova_box: NovaBoxInfo) -> Iterator[openstack.connection.Connection]:
    conn = nova_box.connection(nova_box.project_id)
    yield conn
    conn.close()


def refused(driver: NovaDriver, field: str, **request: Any) -> str:
    name, owner = fresh("refused")
    with pytest.raises(AmphoraBuildError) as err:
        driver.build(name=name, owner=owner, **request)
    assert (err.value.reason, err.value.field, err.value.retryable) == (NOT_ALLOWED, field, False)
    return err.value.message


def test_a_reserved_network_is_refused_by_id_and_by_name(
    nova_box: NovaBoxInfo, make: Any, admin: openstack.connection.Connection
) -> None:
    # The management network is reserved by name; requests naming it either way are refused.
    driver, ids = make(management_networks=[nova_box.network_name])
    for ref in (nova_box.network_id, nova_box.network_name):
        message = refused(driver, "network_ids", network_ids=[ref])
        assert f"network {ref!r} is reserved" in message and "management_networks" in message
    # A request naming no network gets the management network, attached by the driver.
    name, owner = fresh("mgmt")
    ids.append(driver.build(name=name, owner=owner))
    # Nova fills in addresses during the build: read them once the server is ACTIVE.
    wait_for(partial(driver.get_amphora, amphora_id=ids[-1]),
             lambda i: i.state is AmphoraState.ACTIVE, timeout=TIMEOUT)  # fmt: skip
    server = admin.compute.get_server(ids[-1])
    assert set(server.addresses) == {nova_box.network_name}
    reserved_only, _ = make(
        reserved_networks=[nova_box.network_id], default_network_ids=[nova_box.network_id]
    )
    assert "reserved_networks" in refused(
        reserved_only, "network_ids", network_ids=[nova_box.network_name]
    )


def test_allow_lists_compare_ids_whichever_way_they_are_written(
    nova_box: NovaBoxInfo, make: Any
) -> None:
    allowed, ids = make(
        allowed_networks=[nova_box.network_name],
        allowed_security_groups=[nova_box.security_group_id],
    )
    name, owner = fresh("allowed")
    ids.append(allowed.build(name=name, owner=owner, network_ids=[nova_box.network_id],
                             sec_groups=[nova_box.security_group_name]))  # fmt: skip
    strict, _ = make(allowed_networks=["no-such-network"], allowed_security_groups=[])
    message = refused(strict, "network_ids", network_ids=[nova_box.network_id])
    assert "allowed_networks: no-such-network" in message
    open_networks, _ = make(allowed_security_groups=[])
    message = refused(
        open_networks, "sec_groups", network_ids=[nova_box.network_id],
        sec_groups=[nova_box.security_group_name],
    )  # fmt: skip
    assert "allowed_security_groups: none" in message


def groups_named(admin: openstack.connection.Connection, suffix: str) -> list[Any]:
    return [g for g in admin.compute.server_groups() if str(g.name).endswith(suffix)]


def test_server_groups_are_scoped_and_go_with_their_last_member(
    nova_box: NovaBoxInfo, make: Any, admin: openstack.connection.Connection
) -> None:
    driver, _ = make(default_network_ids=[nova_box.network_id])
    group = f"web-{uuid.uuid4().hex[:8]}"
    # Scope a takes the name with one policy; scope b's build with another is not refused.
    built = {}
    for scope, policy, count in (("team-a", "affinity", 2), ("team-b", "anti-affinity", 1)):
        for index in range(count):
            name, owner = fresh(f"{scope}-{index}")
            built[(scope, index)] = driver.build(
                name=name, owner=owner,
                server_group=ServerGroup(name=group, policy=policy, scope=scope),
            )  # fmt: skip
    for amphora_id in built.values():
        wait_for(partial(driver.get_amphora, amphora_id=amphora_id),
                 lambda i: i.state is AmphoraState.ACTIVE, timeout=TIMEOUT)  # fmt: skip
    groups = {g.name: g for g in groups_named(admin, f":{group}")}
    assert set(groups) == {f"{driver.managed_tag}:team-a:{group}",
                           f"{driver.managed_tag}:team-b:{group}"}  # fmt: skip
    assert len(groups[f"{driver.managed_tag}:team-a:{group}"].member_ids) == 2

    def gone(amphora_id: str) -> None:
        driver.delete(amphora_id)
        wait_for(partial(driver.find, amphora_id=amphora_id), lambda f: not f, timeout=TIMEOUT)

    gone(built[("team-a", 0)])  # one member left: the group stays
    assert [g.name for g in groups_named(admin, f"team-a:{group}")] != []
    gone(built[("team-a", 1)])  # the last member: the group goes
    assert groups_named(admin, f"team-a:{group}") == []
    assert len(groups_named(admin, f"team-b:{group}")) == 1, "another scope's group stays"
    gone(built[("team-b", 0)])
    assert groups_named(admin, f":{group}") == []
