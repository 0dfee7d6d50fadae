#!/usr/bin/env bash
# Copy the generated CRDs (crds/, from `make crd`) into the kustomize base.
#
# kustomize refuses files outside a kustomization's directory (`security; file ... is not in or
# below ...`), so deploy/base/ carries a copy. tests/deploy/test_manifests.py fails when the
# copy differs from crds/; run this script after `make crd`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -f "$repo"/deploy/base/crds/*.yaml
cp "$repo"/crds/*.yaml "$repo"/deploy/base/crds/
