# The two commands a newcomer needs: `make demo` (the main job) and `make test` (the suite).
# Both install everything on a fresh machine: a virtualenv, the Go-built control plane
# (cached in ~/.cache/amphora-operator), and the Nova test box's own virtualenv.

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo demo-down test venv control-plane nova-box lint crd bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Install the project and its test tools (re-run when pyproject.toml changes).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed

control-plane:
	bash hack/control-plane/build.sh

# The box's two venvs (Nova; Keystone + Glance) install side by side.
nova-box:
	bash hack/nova-box/install.sh nova & nova=$$!; bash hack/nova-box/install.sh cloud; wait $$nova

## Run the main job: local control plane, operator, sample Amphorae, `kubectl get amphorae`.
demo: venv control-plane
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/demo.sh up

demo-down:
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/demo.sh down

## Run the whole test suite against the real control plane and the real Nova API.
test: venv control-plane nova-box
	PATH="$(CURDIR)/$(BIN):$$PATH" bash hack/run-tests.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

crd: venv
	$(BIN)/python -m amphora_operator.crd > crds/amphorae.amphora-operator.dev.yaml
	bash deploy/sync-crds.sh

bench: venv control-plane
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run
