"""Which instances garbage collection deletes, and when: the pure decision (no I/O)."""

from __future__ import annotations

import uuid
from typing import Any

from amphora_drivers import AmphoraInstance, AmphoraState, AmphoraType
from amphora_operator.garbage import Claim, claims_of, plan_collection, uid_of
from amphora_operator.planner import owner_key

UID = str(uuid.uuid4())
OTHER = str(uuid.uuid4())


def instance(amphora_id: str, owner: str | None, state: AmphoraState = AmphoraState.ACTIVE
             ) -> AmphoraInstance:  # fmt: skip
    return AmphoraInstance(
        id=amphora_id, name=f"amp-{amphora_id}", amphora_type=AmphoraType.VM, state=state,
        raw_state=state.value.lower(), owner=owner,
    )  # fmt: skip


def body(uid: str = UID, spec: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "lb", "namespace": "tenant", "uid": uid},
        "spec": spec or {},
        "status": status,
    }


def collect(
    instances: list[AmphoraInstance],
    bodies: list[dict[str, Any]],
    *,
    first_seen: dict[str, float] | None = None,
    now: float = 100.0,
    grace: float = 0.0,
    spared: tuple[str, ...] = (),
) -> tuple[list[tuple[str, str]], dict[str, float]]:
    sweep = plan_collection(
        instances=instances, claims=claims_of(bodies), first_seen=first_seen or {}, now=now,
        grace=grace, spared=spared,
    )  # fmt: skip
    return [(o.instance.id, o.reason) for o in sweep.collect], sweep.first_seen


def test_owner_keys_are_read_back_and_anything_else_is_not_ours() -> None:
    assert uid_of(owner_key(UID, 3)) == UID.replace("-", "")
    for owner in (None, "", "someone-else", f"{UID}-1", UID.replace("-", "")):
        assert uid_of(owner) is None, owner


def test_an_instance_whose_amphora_is_gone_is_collected_after_the_grace_period() -> None:
    orphan = instance("i-1", owner_key(UID, 1))
    collected, pending = collect([orphan], [], now=100.0, grace=30.0)
    assert collected == [] and pending == {"i-1": 100.0}
    collected, pending = collect([orphan], [], first_seen=pending, now=129.0, grace=30.0)
    assert collected == [] and pending == {"i-1": 100.0}, "the first sighting is kept"
    collected, pending = collect([orphan], [], first_seen=pending, now=130.0, grace=30.0)
    assert collected == [("i-1", "OwnerGone")] and pending == {}


def test_an_instance_claimed_again_restarts_its_grace_period() -> None:
    orphan = instance("i-1", owner_key(UID, 1))
    _, pending = collect([orphan], [], now=100.0, grace=30.0)
    _, pending = collect([orphan], [body(computeId="i-1", revision=1)], first_seen=pending,
                         now=110.0, grace=30.0)  # fmt: skip
    assert pending == {}
    collected, pending = collect([orphan], [], first_seen=pending, now=131.0, grace=30.0)
    assert collected == [] and pending == {"i-1": 131.0}


def test_every_id_an_amphora_names_is_kept() -> None:
    bodies = [
        body(computeId="cur", revision=2, retired=["old"],
             replacement={"revision": 3, "specHash": "h", "computeId": "rep"}),
        body(OTHER, spec={"importId": "imported"}, computeId="imported"),
    ]  # fmt: skip
    instances = [
        instance("cur", owner_key(UID, 2)),
        instance("old", owner_key(UID, 1)),
        instance("rep", owner_key(UID, 3)),
        # Built by a third, deleted Amphora, now imported by OTHER: the import holds it.
        instance("imported", owner_key(str(uuid.uuid4()), 1)),
    ]
    assert collect(instances, bodies) == ([], {})


def test_builds_in_flight_are_kept_by_owner_key() -> None:
    """The intent (revision, replacement) is written before the build; the id comes after."""
    bodies = [body(revision=1), body(OTHER, computeId="cur", revision=1,
                                     replacement={"revision": 2, "specHash": "h"})]  # fmt: skip
    instances = [instance("new", owner_key(UID, 1)), instance("cur", owner_key(OTHER, 1)),
                 instance("rep", owner_key(OTHER, 2))]  # fmt: skip
    assert collect(instances, bodies) == ([], {})


def test_stale_revisions_and_duplicates_are_unclaimed() -> None:
    bodies = [body(computeId="cur", revision=3)]
    instances = [
        instance("cur", owner_key(UID, 3)),
        instance("stale", owner_key(UID, 2)),  # a replacement built, then the spec moved on
        instance("twin", owner_key(UID, 3)),  # a second build of the current revision
    ]
    collected, _ = collect(instances, bodies)
    assert collected == [("stale", "Unclaimed"), ("twin", "Unclaimed")]
    sweep = plan_collection(instances=instances, claims=claims_of(bodies), first_seen={},
                            now=0.0, grace=0.0)  # fmt: skip
    assert {o.claim for o in sweep.collect} == {
        Claim("tenant", "lb", UID, ids=frozenset({"cur"}), owners=frozenset())
    }, "the Event goes to the Amphora that still exists"


def test_released_foreign_and_dying_instances_are_never_considered() -> None:
    instances = [
        instance("released", None),
        instance("foreign", "not-an-owner-key"),
        instance("dying", owner_key(UID, 1), AmphoraState.DELETING),
        instance("gone", owner_key(UID, 1), AmphoraState.DELETED),
    ]
    assert collect(instances, []) == ([], {})


def test_an_unreadable_status_keeps_everything_of_its_amphora() -> None:
    bodies = [body(revision="not a number", computeId="cur")]
    assert collect([instance("other", owner_key(UID, 7))], bodies) == ([], {})


def test_spared_instances_are_never_collected() -> None:
    """Orphan releases the finalizer could not finish."""
    assert collect([instance("kept", owner_key(UID, 1))], [], spared=("kept",)) == ([], {})
