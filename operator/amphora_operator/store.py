"""The slim cache: the latest known Amphora bodies, trimmed to what reconciling reads.

Watch events and our own writes both land here; the newer resourceVersion wins. Only the
metadata the runtime reads is kept (no managedFields, annotations or labels), so memory grows
with N times the slim body and nothing else.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["Store", "slim"]

#: Metadata fields the runtime reads; everything else (managedFields, annotations...) is dropped.
_KEPT_METADATA = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "deletionTimestamp",
    "finalizers",
)


#: Strings up to this length are interned in the cache (names, reasons, states, timestamps).
_INTERNED_UP_TO = 64


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` holding only metadata the runtime reads, the spec and the status."""
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {
        "metadata": {k: _shared(meta[k]) for k in _KEPT_METADATA if meta.get(k) is not None},
        "spec": _shared(body.get("spec") or {}),
    }
    if body.get("status"):
        out["status"] = _shared(body["status"])
    return out


def _shared(value: Any) -> Any:
    """A copy whose keys and short strings are interned: every decoded watch event brings its
    own copies of the same condition types, reasons and field names, which would otherwise
    cost each cached Amphora about twice the memory (6.2 against 2.9 KiB, measured)."""
    if isinstance(value, dict):
        return {sys.intern(k): _shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shared(v) for v in value]
    if isinstance(value, str) and len(value) <= _INTERNED_UP_TO:
        return sys.intern(value)
    return value


def _version(body: Mapping[str, Any]) -> int:
    try:
        return int(body["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return -1


class Store:
    """Slim bodies by uid. Not thread-safe: used from the event loop only."""

    def __init__(self) -> None:
        self._bodies: dict[str, dict[str, Any]] = {}

    def put(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Keep ``body`` unless the known one is newer; return the previous body (None: new).

        Watch events can arrive after our own write returned a newer body: those are ignored.
        """
        uid = body["metadata"]["uid"]
        known = self._bodies.get(uid)
        if known is not None and _version(body) < _version(known):
            return known
        self._bodies[uid] = slim(body)
        return known

    def update(self, body: Mapping[str, Any]) -> None:
        """Keep ``body`` (a reply to our own write) only if the object is still known: a
        deletion seen meanwhile must not bring it back."""
        if body["metadata"]["uid"] in self._bodies:
            self.put(body)

    def get(self, uid: str) -> dict[str, Any] | None:
        return self._bodies.get(uid)

    def remove(self, uid: str) -> dict[str, Any] | None:
        return self._bodies.pop(uid, None)

    def __len__(self) -> int:
        return len(self._bodies)

    def __contains__(self, uid: object) -> bool:
        return uid in self._bodies

    def uids(self) -> Iterator[str]:
        return iter(list(self._bodies))
