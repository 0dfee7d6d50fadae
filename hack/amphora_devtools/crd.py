"""Installing the committed Amphora CRD into a cluster and waiting until it is served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s

from amphora_devtools.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "amphorae.amphora-operator.dev.yaml"


def install_crd(
    api: k8s.ApiClient, crd_file: Path = CRD_FILE, timeout: float = 60.0
) -> dict[str, Any]:
    """Create (or replace) the CRD of ``crd_file``; return its manifest once Established."""
    manifest: dict[str, Any] = yaml.safe_load(crd_file.read_text())
    name = manifest["metadata"]["name"]
    # Typed as Any: the client takes plain dicts as bodies, its annotations say model objects.
    ext: Any = k8s.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(manifest)
    except k8s.ApiException as error:
        if error.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        replacement = {
            **manifest,
            "metadata": {
                **manifest["metadata"],
                "resourceVersion": current.metadata.resource_version,
            },
        }
        ext.replace_custom_resource_definition(name, replacement)

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_until(established, timeout=timeout, what=f"CRD {name} Established")
    return manifest
