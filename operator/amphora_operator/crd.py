"""Generate the Amphora CustomResourceDefinition from the pydantic models in :mod:`.model`.

``python -m amphora_operator.crd > crds/amphorae.amphora-operator.dev.yaml`` regenerates the
committed file; ``tests/operator/test_crd.py`` fails when the two differ.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml
from pydantic import BaseModel

from amphora_operator.model import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    AmphoraSpec,
    AmphoraStatus,
)

__all__ = ["CRD_NAME", "crd_manifest", "crd_yaml", "openapi_schema"]

CRD_NAME = f"{PLURAL}.{GROUP}"

_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A Kubernetes structural schema for ``model``: refs inlined, nulls and titles dropped."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}
    if "anyOf" in node:
        # Optional[X] is "X | null" in JSON schema; Kubernetes expresses it by omission.
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types in a CRD")
        node = {**_structural(options[0], defs), **node}
    if "allOf" in node and len(node["allOf"]) == 1:
        node = {**_structural(node.pop("allOf")[0], defs), **node}
    if node.get("default", "unset") in (None, [], {}):
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        elif key in ("items",):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict, ready to apply."""
    spec_schema = openapi_schema(AmphoraSpec)
    status_schema = openapi_schema(AmphoraStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["all", "amphora-operator"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "An amphora: a load-balancer instance (VM, Container or "
                                "BareMetal) built and kept by amphora-operator through a "
                                "compute driver."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": {
                                    **spec_schema,
                                    "description": spec_schema.get(
                                        "description", "The desired amphora."
                                    ),
                                },
                                # Every new Amphora starts with observedGeneration 0, so
                                # kstatus reads it InProgress (not Current) until observed.
                                "status": {**status_schema, "default": {"observedGeneration": 0}},
                            },
                        }
                    },
                }
            ],
        },
    }


def _printer_columns() -> list[dict[str, Any]]:
    def column(name: str, path: str, kind: str = "string", priority: int = 0) -> dict[str, Any]:
        col: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
        if priority:
            col["priority"] = priority
        return col

    return [
        column("Type", ".spec.type"),
        column("Flavor", ".spec.flavor"),
        column("Phase", ".status.phase"),
        column("Compute ID", ".status.computeId"),
        column("Address", ".status.addresses[0]"),
        # Why it is not Ready (Building, Suspended, NoValidHost, CircuitOpen...), at a glance.
        column("Reason", '.status.conditions[?(@.type=="Ready")].reason'),
        column("Driver", ".status.driver", priority=1),
        column("Fault", ".status.fault", priority=1),
        column("Age", ".metadata.creationTimestamp", kind="date"),
    ]


def crd_yaml() -> str:
    header = (
        "# Generated by `python -m amphora_operator.crd` from amphora_operator/model.py.\n"
        "# Do not edit: change the model and regenerate (a test checks they agree).\n"
    )
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(crd_yaml())
