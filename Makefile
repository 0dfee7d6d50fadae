# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the suite).
# Both install everything on a fresh machine: a virtualenv, the Go-built control plane and
# kubelet (cached in ~/.cache/amphora-operator), the real Node's Debian packages, and the test
# boxes' own virtualenvs. hack/setup.sh runs those steps in concurrent lanes: the Go builds
# (CPU-bound) one after another in one lane, each download-bound install in a lane of its own.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-down test setup-test setup-demo venv control-plane nova-box real-node kstatus \
	octavia lint crd bench

GO_LANE := control-plane+kubelet+kstatus

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Install the project, its test tools and the dev harness (hack/: a distribution of its own,
# never in the image); re-run when either pyproject.toml changes. Run-time packages at the
# image's versions (deploy/image/constraints.txt), so the tests test what the image ships.
$(VENV)/.installed: pyproject.toml hack/pyproject.toml deploy/image/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet --constraint deploy/image/constraints.txt -e '.[test,bench]' -e ./hack
	touch $@

venv: $(VENV)/.installed

control-plane:
	bash hack/control-plane/build.sh

# The box's two venvs (Nova; Keystone + Glance) install side by side; either failing fails.
nova-box:
	bash hack/setup.sh nova-venv cloud-venv

# Octavia 19's own venv for tests/octavia.
octavia:
	bash hack/octavia/install.sh

# The real kubelet Node: Debian packages (as root) and a kubelet from the control plane's module.
real-node: control-plane
	bash hack/real-node/install.sh
	bash hack/real-node/build-kubelet.sh

# The kstatus tool (cli-utils) the status tests judge Amphorae with.
kstatus:
	bash hack/kstatus/build.sh

# Everything each command needs, in concurrent lanes (see hack/setup.sh).
setup-demo:
	bash hack/setup.sh venv control-plane+kubelet node-packages

setup-test:
	bash hack/setup.sh venv $(GO_LANE) node-packages nova-venv cloud-venv octavia-venv

## Run the main job: local control plane, operator, sample Amphorae, `kubectl get amphorae`.
demo: setup-demo
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/demo.sh up

demo-down:
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/demo.sh down

## Run the whole test suite against the real control plane and the real Nova API.
test: setup-test
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/run-tests.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mypy --config-file integrations/octavia/pyproject.toml
	$(BIN)/lint-imports

crd: venv
	$(BIN)/python -m amphora_operator.crd > crds/amphorae.amphora-operator.dev.yaml
	bash deploy/sync-crds.sh

bench: venv control-plane
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run
