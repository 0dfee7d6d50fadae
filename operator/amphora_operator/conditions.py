"""Conditions in Kubernetes API convention, built by one pure function (k-orc's way)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from amphora_operator.model import Condition

__all__ = ["now_rfc3339", "set_condition"]


def now_rfc3339(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Return ``conditions`` with ``type`` set; lastTransitionTime moves only when status does."""
    status_word = "Unknown" if status is None else ("True" if status else "False")
    previous = next((c for c in conditions if c.type == type), None)
    since = (
        previous.last_transition_time
        if previous is not None and previous.status == status_word
        else now
    )
    updated = Condition(
        type=type,
        status=status_word,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )
    others = [c for c in conditions if c.type != type]
    return sorted([*others, updated], key=lambda c: c.type)
