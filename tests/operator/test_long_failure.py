"""A failure that never ends: the planner through thousands of retries on a fake clock.

Issue 16: ``base * 2**retries`` overflowed at 1,024 retries, after which an Amphora was
retried every poll round, and an ERROR instance made planning raise (the Amphora was never
updated again). Both failure paths (the instance ends in ERROR; the build call itself fails)
run here for over 2,000 retries: no exception, and never more than one build per
``retry_max`` once the backoff reached its cap.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

from amphora_drivers import AmphoraState
from amphora_operator.model import AmphoraStatus, Phase
from amphora_operator.planner import (
    Build,
    Delete,
    Failure,
    Observation,
    parse_time,
    plan,
    plan_failure,
)

from tests.operator.test_planner import NOW, instance, spec

RETRIES = 2_100
BASE, CAP = 10.0, 300.0


def build_times_until(retries: int, *, build_fails: bool) -> tuple[list[datetime], AmphoraStatus]:
    """Drive plan() with a fake clock that jumps to each due time; return when builds ran."""
    status, now, builds = AmphoraStatus(), NOW, []
    for step in range(retries * 3):
        if status.retries >= retries:
            break
        current = status.compute_id
        broken = instance(current, AmphoraState.ERROR, fault="No valid host") if current else None
        # Deletions confirm at once.
        observation = Observation(current=broken, retired={rid: None for rid in status.retired})
        result = plan(spec=spec(), status=status, observation=observation, generation=1,
                      profile="noop", now=now, retry_base=BASE, retry_max=CAP)  # fmt: skip
        status = result.status
        for action in result.actions:
            if isinstance(action, Build):
                builds.append(now)
                if build_fails:
                    status = plan_failure(
                        status, Failure("build", "BackendUnavailable", "503", True),
                        generation=1, now=now, retry_base=BASE, retry_max=CAP,
                    )  # fmt: skip
                else:
                    status.compute_id = f"i{step}"
            else:
                assert isinstance(action, Delete)
        due = parse_time(status.next_retry_time) if status.next_retry_time else None
        now = due if due is not None and due > now else now + timedelta(seconds=1)
    return builds, status


def check(builds: list[datetime], status: AmphoraStatus) -> None:
    assert status.retries >= RETRIES > 2_000
    assert status.phase in (Phase.FAILED, Phase.BUILDING)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(builds)]
    capped = gaps[20:]  # 10 s doubling reaches the 300 s cap after a few retries
    assert len(capped) > 2_000
    assert min(capped) >= CAP, f"a retry came {min(capped)} s after the previous one"
    assert max(gaps) <= CAP + 1, "the backoff never grows past its cap"
    hours = (builds[-1] - builds[0]).total_seconds() / 3600
    assert len(builds) <= hours * 3600 / CAP + 20, "bounded retry rate over the whole run"


def test_an_instance_in_error_for_2000_retries_never_raises_and_retries_at_the_cap() -> None:
    check(*build_times_until(RETRIES, build_fails=False))


def test_a_build_call_failing_2000_times_never_raises_and_retries_at_the_cap() -> None:
    check(*build_times_until(RETRIES, build_fails=True))
