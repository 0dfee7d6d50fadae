"""Test helpers for driver authors: the shared conformance suite and sample inputs."""

from amphora_drivers.testing.conformance import (
    ConformanceTarget,
    DriverConformance,
    make_ssh_public_key,
    wait_for,
)

__all__ = ["ConformanceTarget", "DriverConformance", "make_ssh_public_key", "wait_for"]
