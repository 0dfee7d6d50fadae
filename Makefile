# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the suite).
# Both install everything on a fresh machine: a virtualenv, the Go-built control plane
# (cached in ~/.cache/amphora-operator), and the Nova test box's own virtualenv.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-down test venv control-plane nova-box real-node kstatus lint crd bench

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
	bash hack/nova-box/install.sh nova & nova=$$!; bash hack/nova-box/install.sh cloud; cloud=$$?; \
	  wait $$nova && [ $$cloud -eq 0 ]

# The real kubelet Node: Debian packages (as root) and a kubelet from the control plane's module.
real-node: control-plane
	bash hack/real-node/install.sh
	bash hack/real-node/build-kubelet.sh

# The kstatus tool (cli-utils) the status tests judge Amphorae with.
kstatus:
	bash hack/kstatus/build.sh

## Run the main job: local control plane, operator, sample Amphorae, `kubectl get amphorae`.
demo: venv control-plane real-node
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/demo.sh up

demo-down:
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/demo.sh down

## Run the whole test suite against the real control plane and the real Nova API.
test: venv control-plane nova-box real-node kstatus
	bash hack/octavia/install.sh >/dev/null  # Octavia 19's own venv for tests/octavia
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
