"""The public API is exactly what ``__all__`` says (in the style of httpx's test).

Other issues build on these names, so an import added without exporting it, or an export
left behind after a rename, must fail here rather than in a downstream package.
"""

from __future__ import annotations

import importlib
import inspect
import types

import amphora_drivers
import pytest

MODULES = [
    "amphora_drivers",
    "amphora_drivers.base",
    "amphora_drivers.breaker",
    "amphora_drivers.exceptions",
    "amphora_drivers.noop",
    "amphora_drivers.registry",
    "amphora_drivers.types",
    "amphora_drivers.testing",
    "amphora_drivers.testing.conformance",
]


def test_package_exports_everything_it_imports() -> None:
    """Every public, non-module name of the package is in __all__, and nothing else is."""
    public = {
        name
        for name, value in vars(amphora_drivers).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(amphora_drivers.__all__) == public


@pytest.mark.parametrize("module_name", MODULES)
def test_all_has_no_duplicates_and_resolves(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names missing {name!r}"


@pytest.mark.parametrize("module_name", MODULES)
def test_public_classes_and_functions_defined_in_a_module_are_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    defined_here = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module_name
    }
    assert defined_here <= set(module.__all__)


def test_package_names_are_the_submodules_objects() -> None:
    """The package re-exports, it does not redefine: one class per name."""
    for name in amphora_drivers.__all__:
        value = getattr(amphora_drivers, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            home = importlib.import_module(value.__module__)
            assert getattr(home, name) is value
            assert name in home.__all__


def test_the_documented_api_is_exported() -> None:
    """The names other issues rely on (the issue's closing note) stay available."""
    expected = {
        "AmphoraComputeDriver",
        "AmphoraComputeError",
        "AmphoraBuildError",
        "DeleteFailed",
        "InstanceNotFoundError",
        "NotSuspendedError",
        "Reason",
        "AmphoraInstance",
        "AmphoraState",
        "AmphoraType",
        "BuildRequest",
        "CircuitBreaker",
        "BreakerSettings",
        "BreakerState",
        "load_driver",
        "available_drivers",
        "UnknownDriverError",
        "ENTRY_POINT_GROUP",
    }
    assert expected <= set(amphora_drivers.__all__)
