"""The planner's policies, as a pure function: no cluster, no backend, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from amphora_drivers import AmphoraInstance, AmphoraState, AmphoraType
from amphora_operator.conditions import set_condition
from amphora_operator.model import AmphoraSpec, AmphoraStatus, Phase, Replacement
from amphora_operator.planner import (
    Build,
    Delete,
    Observation,
    Plan,
    Resume,
    Suspend,
    owner_key,
    parse_time,
    plan,
    plan_deletion,
    spec_hash,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
UID = "0863fd03-7166-46aa-9c35-93539b4c2a29"


def spec(**fields: Any) -> AmphoraSpec:
    return AmphoraSpec.model_validate({"flavor": "f", "image": "img", **fields})


def instance(id_: str, state: AmphoraState, fault: str | None = None, **kw: Any) -> AmphoraInstance:
    return AmphoraInstance(
        id=id_, name=f"n-{id_}", amphora_type=AmphoraType.VM, state=state,
        raw_state=state.value.lower(), addresses=("192.0.2.1",), fault=fault, **kw,
    )  # fmt: skip


def run(
    s: AmphoraSpec, status: AmphoraStatus, observation: Observation, now: datetime = NOW
) -> Plan:
    return plan(spec=s, status=status, observation=observation, generation=3, profile="noop",
                now=now, retry_base=10, retry_max=300)  # fmt: skip


def cond(status: AmphoraStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status, c.reason


def test_new_amphora_builds_revision_zero() -> None:
    result = run(spec(), AmphoraStatus(), Observation())
    assert result.actions == [Build(0)]
    assert result.status.phase is Phase.BUILDING
    assert result.status.spec_hash == spec_hash(spec())
    assert cond(result.status, "Progressing") == ("True", "Building")
    assert cond(result.status, "Ready") == ("False", "Building")
    assert result.status.observed_generation == 3


def test_instance_found_by_owner_is_adopted_not_rebuilt() -> None:
    found = instance("a", AmphoraState.ACTIVE, owner=owner_key(UID, 0))
    result = plan(spec=spec(), status=AmphoraStatus(), observation=Observation(current=found),
                  generation=1, profile="noop", now=NOW, retry_base=10, retry_max=300)  # fmt: skip
    assert result.actions == []
    assert result.status.compute_id == "a"
    assert result.status.phase is Phase.READY
    assert ("Normal", "Adopted", "found instance a by owner") in result.events


def test_adopted_instance_of_an_older_generation_is_replaced() -> None:
    """A crash before the first status write hides which spec the instance came from: when
    the spec has changed since (generation > 1), the adopted instance is rolled out again."""
    found = instance("a", AmphoraState.ACTIVE, owner=owner_key(UID, 0))
    result = run(spec(), AmphoraStatus(), Observation(current=found))  # generation 3
    assert result.status.compute_id == "a"
    assert result.actions == [Build(1, replacement=True)]
    assert result.status.phase is Phase.UPDATING


def test_active_instance_is_ready_with_addresses() -> None:
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()))
    result = run(spec(), status, Observation(current=instance("a", AmphoraState.ACTIVE)))
    assert result.actions == []
    assert result.status.phase is Phase.READY
    assert result.status.addresses == ["192.0.2.1"]
    assert cond(result.status, "Ready") == ("True", "Ready")
    assert cond(result.status, "Progressing") == ("False", "Stable")


def test_error_waits_for_backoff_then_rebuilds_and_retires_the_broken_one() -> None:
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()))
    broken = Observation(current=instance("a", AmphoraState.ERROR, fault="No valid host"))
    first = run(spec(), status, broken)
    assert first.actions == []
    assert first.status.phase is Phase.FAILED
    assert first.status.fault == "No valid host"
    assert first.status.next_retry_time == "2026-11-25T12:00:10Z"
    assert cond(first.status, "Ready")[0] == "False"
    later = run(spec(), first.status, broken, now=NOW + timedelta(seconds=11))
    assert later.actions == [Delete("a"), Build(1)]
    assert later.status.retired == ["a"]
    assert later.status.revision == 1 and later.status.retries == 1
    assert later.status.compute_id is None


def test_backoff_doubles_and_is_capped() -> None:
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()), retries=10)
    result = run(spec(), status, Observation(current=instance("a", AmphoraState.ERROR)))
    assert result.status.next_retry_time == "2026-11-25T12:05:00Z"  # 300 s cap


def test_spec_change_retries_a_failed_build_at_once() -> None:
    status = AmphoraStatus(
        spec_hash=spec_hash(spec()), phase=Phase.FAILED, next_retry_time="2026-11-25T13:00:00Z"
    )
    waiting = run(spec(), status, Observation())
    assert waiting.actions == []
    changed = run(spec(image="fixed"), status, Observation())
    assert changed.actions == [Build(0)]


def test_spec_change_builds_a_replacement_first_then_retires_the_old() -> None:
    old_hash = spec_hash(spec())
    status = AmphoraStatus(compute_id="a", spec_hash=old_hash)
    new = spec(image="img-2")
    started = run(new, status, Observation(current=instance("a", AmphoraState.ACTIVE)))
    assert started.actions == [Build(1, replacement=True)]
    assert started.status.phase is Phase.UPDATING
    assert started.status.compute_id == "a"
    assert started.status.replacement == Replacement(
        revision=1, spec_hash=spec_hash(new), reason="SpecChanged"
    )
    building = started.status.model_copy(
        update={"replacement": started.status.replacement.model_copy(update={"compute_id": "b"})}
    )
    still = run(
        new,
        building,
        Observation(
            current=instance("a", AmphoraState.ACTIVE),
            replacement=instance("b", AmphoraState.BUILDING),
        ),
    )
    assert still.actions == [] and still.status.compute_id == "a"
    swapped = run(
        new,
        building,
        Observation(
            current=instance("a", AmphoraState.ACTIVE),
            replacement=instance("b", AmphoraState.ACTIVE),
        ),
    )
    assert swapped.actions == [Delete("a")]
    assert swapped.status.compute_id == "b" and swapped.status.revision == 1
    assert swapped.status.retired == ["a"] and swapped.status.replacement is None
    assert swapped.status.phase is Phase.READY


def test_a_failed_replacement_is_rebuilt_after_its_backoff_while_the_current_one_serves() -> None:
    """Found by the Nova chaos soak: the current instance's health reset the retry time every
    pass, so a replacement in ERROR waited for ever (a status write each pass, no rebuild)."""
    new = spec(image="img-2", suspended=True)
    status = AmphoraStatus(
        compute_id="a",
        spec_hash=spec_hash(spec()),
        replacement=Replacement(revision=1, spec_hash=spec_hash(new), reason="SpecChanged",
                                compute_id="b"),
    )  # fmt: skip
    failing = Observation(
        current=instance("a", AmphoraState.SUSPENDED),
        replacement=instance("b", AmphoraState.ERROR, fault="Quota exceeded for instances"),
    )
    first = run(new, status, failing)
    assert first.actions == [] and first.status.next_retry_time is not None
    assert first.status.fault == "replacement failed: Quota exceeded for instances"
    again = run(new, first.status, failing, now=NOW + timedelta(milliseconds=300))
    assert again.actions == [], "still within the backoff"
    assert again.status.next_retry_time == first.status.next_retry_time, "not pushed back"
    due = parse_time(first.status.next_retry_time) + timedelta(seconds=1)
    rebuilt = run(new, again.status, failing, now=due)
    assert rebuilt.actions == [Delete("b"), Build(2, replacement=True)]
    assert rebuilt.status.retries == 1 and rebuilt.status.compute_id == "a"
    swapped = run(
        new,
        rebuilt.status.model_copy(
            update={
                "replacement": rebuilt.status.replacement.model_copy(update={"compute_id": "c"})
            }
        ),
        Observation(
            current=instance("a", AmphoraState.SUSPENDED),
            replacement=instance("c", AmphoraState.ACTIVE),
        ),
        now=due,
    )
    assert swapped.actions == [Delete("a"), Suspend("c")], "swapped in, then suspended"
    assert swapped.status.compute_id == "c" and swapped.status.fault is None
    assert swapped.status.retries == 0 and swapped.status.next_retry_time is None


def test_a_replacement_found_by_owner_already_active_is_swapped_in_the_same_pass() -> None:
    """Built before a crash, its id never written: found by owner after the restart. Already
    ACTIVE, it never changes again, so waiting for a later pass would wait for ever (seen in
    the Nova chaos soak: Updating for more than 120 s)."""
    new = spec(image="img-2")
    status = AmphoraStatus(
        compute_id="a",
        spec_hash=spec_hash(spec()),
        replacement=Replacement(revision=1, spec_hash=spec_hash(new), reason="SpecChanged"),
    )
    current = instance("a", AmphoraState.ACTIVE)
    found = instance("b", AmphoraState.ACTIVE, owner=owner_key(UID, 1))
    result = run(new, status, Observation(current=current, replacement=found))
    assert result.actions == [Delete("a")]
    assert result.status.compute_id == "b" and result.status.revision == 1
    assert result.status.replacement is None and result.status.retired == ["a"]
    assert result.status.phase is Phase.READY
    building = instance("b", AmphoraState.BUILDING, owner=owner_key(UID, 1))
    waiting = run(new, status, Observation(current=current, replacement=building))
    assert waiting.actions == [] and waiting.status.compute_id == "a"
    assert waiting.status.replacement is not None
    assert waiting.status.replacement.compute_id == "b", "its id is recorded meanwhile"
    missing = run(new, status, Observation(current=current))
    assert missing.actions == [Build(1, replacement=True)], "not found: built (again)"


def test_a_spec_changed_back_drops_the_replacement_it_no_longer_needs() -> None:
    """The spec moves on and then back to the current instance's before the replacement is
    swapped in (seen in the Nova chaos soak: Updating for more than 120 s, nothing built)."""
    old, new = spec(), spec(image="img-2")
    status = AmphoraStatus(
        compute_id="a",
        spec_hash=spec_hash(old),
        replacement=Replacement(revision=1, spec_hash=spec_hash(new), reason="SpecChanged"),
    )
    current = instance("a", AmphoraState.ACTIVE)
    unbuilt = run(old, status, Observation(current=current))
    assert unbuilt.actions == [] and unbuilt.status.replacement is None
    assert unbuilt.status.phase is Phase.READY and unbuilt.status.compute_id == "a"
    found = instance("b", AmphoraState.BUILDING, owner=owner_key(UID, 1))
    unrecorded = run(old, status, Observation(current=current, replacement=found))
    assert unrecorded.actions == [Delete("b")] and unrecorded.status.retired == ["b"]
    recorded = status.model_copy(
        update={"replacement": status.replacement.model_copy(update={"compute_id": "b"})}
    )
    dropped = run(old, recorded, Observation(current=current, replacement=found))
    assert dropped.actions == [Delete("b")] and dropped.status.retired == ["b"]
    assert dropped.status.replacement is None and dropped.status.phase is Phase.READY


def test_retired_instances_are_deleted_until_confirmed_gone() -> None:
    status = AmphoraStatus(compute_id="b", spec_hash=spec_hash(spec()), retired=["a", "z"])
    result = run(spec(), status, Observation(
        current=instance("b", AmphoraState.ACTIVE),
        retired={"a": instance("a", AmphoraState.ACTIVE), "z": None},
    ))  # fmt: skip
    assert result.actions == [Delete("a")]
    assert result.status.retired == ["a"]
    deleting = run(spec(), result.status, Observation(
        current=instance("b", AmphoraState.ACTIVE),
        retired={"a": instance("a", AmphoraState.DELETING)},
    ))  # fmt: skip
    assert deleting.actions == [], "a delete in progress is not re-issued"


def test_lost_instance_is_rebuilt_when_managed_and_reported_when_observed() -> None:
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()))
    managed = run(spec(), status, Observation(current=None))
    assert managed.actions == [Build(1)]
    assert any(e[1] == "InstanceLost" for e in managed.events)
    observed = run(spec(importId="a", managementPolicy="ObserveOnly"), status, Observation())
    assert observed.actions == []
    assert observed.status.phase is Phase.FAILED
    assert cond(observed.status, "Ready") == ("False", "InstanceLost")


def test_suspended_toggles_in_place() -> None:
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()))
    suspend = run(
        spec(suspended=True), status, Observation(current=instance("a", AmphoraState.ACTIVE))
    )
    assert suspend.actions == [Suspend("a")]
    assert suspend.status.phase is Phase.UPDATING
    done = run(
        spec(suspended=True), status, Observation(current=instance("a", AmphoraState.SUSPENDED))
    )
    assert done.actions == [] and done.status.phase is Phase.SUSPENDED
    resume = run(spec(), status, Observation(current=instance("a", AmphoraState.SUSPENDED)))
    assert resume.actions == [Resume("a")]


def test_observe_only_never_acts() -> None:
    s = spec(importId="a", managementPolicy="ObserveOnly", suspended=True, image="changed")
    status = AmphoraStatus(compute_id="a", spec_hash="something-else")
    result = run(s, status, Observation(current=instance("a", AmphoraState.ACTIVE)))
    assert result.actions == []
    assert result.status.phase is Phase.READY


def test_import_adopts_the_named_instance_or_reports_it_missing() -> None:
    s = spec(importId="x")
    found = run(s, AmphoraStatus(), Observation(current=instance("x", AmphoraState.ACTIVE)))
    assert found.status.compute_id == "x" and found.actions == []
    missing = run(s, AmphoraStatus(), Observation())
    assert missing.actions == []
    assert cond(missing.status, "Ready") == ("False", "ImportNotFound")


def test_conditions_keep_transition_time_when_status_does_not_change() -> None:
    first = set_condition([], type="Ready", status=True, reason="Ready", message="m",
                          generation=1, now="2026-01-01T00:00:00Z")  # fmt: skip
    same = set_condition(first, type="Ready", status=True, reason="Ready", message="m2",
                         generation=2, now="2026-01-02T00:00:00Z")  # fmt: skip
    assert same[0].last_transition_time == "2026-01-01T00:00:00Z"
    assert same[0].observed_generation == 2 and same[0].message == "m2"
    flipped = set_condition(same, type="Ready", status=False, reason="X", message="m",
                            generation=2, now="2026-01-03T00:00:00Z")  # fmt: skip
    assert flipped[0].last_transition_time == "2026-01-03T00:00:00Z"


def test_plan_is_stable_when_nothing_changes() -> None:
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()))
    obs = Observation(current=instance("a", AmphoraState.ACTIVE))
    once = run(spec(), status, obs).status
    twice = run(spec(), once, obs, now=NOW + timedelta(minutes=5)).status
    assert once == twice, "a stable amphora must not cause status writes"


def test_deletion_plan() -> None:
    obs = Observation(
        current=instance("a", AmphoraState.ACTIVE),
        retired={"b": instance("b", AmphoraState.DELETING), "c": None},
    )
    assert plan_deletion(spec=spec(), status=AmphoraStatus(), observation=obs) == (
        ["a"], ["a", "b"],
    )  # fmt: skip
    assert plan_deletion(spec=spec(deletionPolicy="Orphan"), status=AmphoraStatus(),
                         observation=obs) == ([], [])  # fmt: skip
    assert plan_deletion(spec=spec(), status=AmphoraStatus(), observation=Observation()) == (
        [], [],
    )  # fmt: skip


def test_thousands_of_failures_neither_overflow_nor_raise() -> None:
    """base * 2**retries used to overflow at 1,024 retries; an ERROR instance must plan."""
    status = AmphoraStatus(compute_id="a", spec_hash=spec_hash(spec()), retries=5000)
    broken = Observation(current=instance("a", AmphoraState.ERROR, fault=None))
    result = run(spec(), status, broken)
    assert result.status.next_retry_time == "2026-11-25T12:05:00Z"  # the 300 s cap
    assert result.status.fault  # a fault is shown even when the backend gives none
    later = run(spec(), result.status, broken, now=NOW + timedelta(seconds=301))
    assert later.actions == [Delete("a"), Build(1)] and later.status.retries == 5001


def test_terminal_and_repeated_failures_are_stalled_transient_ones_reconciling() -> None:
    from amphora_operator.planner import Failure, plan_failure

    def fail(retryable: bool, retries: int = 0) -> AmphoraStatus:
        return plan_failure(
            AmphoraStatus(retries=retries), Failure("build", "X", "boom", retryable),
            generation=3, now=NOW, retry_base=10, retry_max=300,
        )  # fmt: skip

    transient = fail(True)
    assert cond(transient, "Reconciling")[0] == "True" and cond(transient, "Stalled")[0] == "False"
    assert transient.next_retry_time == "2026-11-25T12:00:10Z"
    assert cond(fail(True, retries=2), "Stalled")[0] == "True", "stalls after 3 failures"
    terminal = fail(False)
    assert cond(terminal, "Stalled")[0] == "True" and cond(terminal, "Reconciling")[0] == "False"
    assert terminal.next_retry_time == "2026-11-25T12:05:00Z", "slow re-check at retry_max"
    assert terminal.observed_generation == 3


def test_first_sight_takes_the_crd_default_generation_0_for_not_yet_observed() -> None:
    from amphora_operator.planner import first_sight

    # What the apiserver serves for a new Amphora: the schema default status.
    defaulted = AmphoraStatus.model_validate({"observedGeneration": 0, "revision": 0})
    first = first_sight(defaulted, generation=1, profile="noop", now=NOW)
    assert first is not None and first.phase is Phase.PENDING and first.observed_generation == 1
    assert cond(first, "Reconciling")[0] == "True" and cond(first, "Ready")[0] == "False"
    assert first_sight(AmphoraStatus(), generation=1, profile="noop", now=NOW) is not None
    assert first_sight(first, generation=1, profile="noop", now=NOW) is None, "written once"
    assert first_sight(first, generation=2, profile="noop", now=NOW) is None, "not on a spec change"
