"""Find and load compute drivers through the ``amphora.compute_drivers`` entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

from amphora_drivers.base import AmphoraComputeDriver

__all__ = [
    "ENTRY_POINT_GROUP",
    "UnknownDriverError",
    "available_drivers",
    "driver_class",
    "load_driver",
]

ENTRY_POINT_GROUP = "amphora.compute_drivers"


class UnknownDriverError(LookupError):
    """No installed driver has the requested name."""


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_drivers() -> list[str]:
    """Names of the installed drivers, sorted."""
    return sorted(_entry_points())


def driver_class(name: str) -> type[AmphoraComputeDriver]:
    """Return the driver class registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise UnknownDriverError(
            f"unknown compute driver {name!r}; installed drivers: "
            f"{', '.join(sorted(eps)) or 'none'} (entry point group {ENTRY_POINT_GROUP!r})"
        )
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, AmphoraComputeDriver)):
        raise TypeError(f"entry point {name!r} does not name an AmphoraComputeDriver subclass")
    return cls


def load_driver(name: str, /, **options: Any) -> AmphoraComputeDriver:
    """Instantiate the driver registered as ``name`` with ``options`` as keyword arguments."""
    return driver_class(name)(**options)
