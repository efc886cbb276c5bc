# The two commands of the README:
#   make lab    set up what is missing, start the lab (management plane, Cluster API, the
#               provider, the boot service, 3 blank hosts), then run the seed's walkthrough
#               (kubectl apply -f examples/simple/) to a working Kubernetes cluster on the hosts
#   make test   set up what is missing, then run every check and test (what CI runs)
.PHONY: lab lab-up lab-down setup test lint typecheck install-check unit crds release

PY := .venv/bin

setup:
	bash scripts/setup.sh

lab: lab-up
	$(PY)/plunderctl lab cluster

lab-up: setup
	$(PY)/plunderctl lab up

lab-down:
	$(PY)/plunderctl lab down

lint:
	$(PY)/ruff check src tests bench
	$(PY)/ruff format --check src tests bench
	$(PY)/lint-imports

typecheck:
	$(PY)/mypy

# Two workers: every e2e test on one, in order; the integration and unit tests on the other,
# beside them (tests/conftest.py, LabScheduling).
test: setup lint typecheck install-check
	$(PY)/pytest -ra --durations=25 -n 2

# What the code imports, the package declares: install it (not editable) into a throwaway venv
# without the dev extra and import every module but the lab's; then add the lab extra (what
# `plunderctl lab up` needs) and import the lab's modules too.
CHECK_VENV := build/install-check
install-check:
	rm -rf $(CHECK_VENV)
	python3 -m venv $(CHECK_VENV)
	$(CHECK_VENV)/bin/pip install -q -c constraints.txt .
	$(CHECK_VENV)/bin/python tests/install_check.py --without plunder.lab
	! $(CHECK_VENV)/bin/plunderctl lab status --dir $(CHECK_VENV)/lab 2>$(CHECK_VENV)/lab.err
	grep -q "needs the lab extra" $(CHECK_VENV)/lab.err
	$(CHECK_VENV)/bin/pip install -q -c constraints.txt '.[lab]'
	$(CHECK_VENV)/bin/python tests/install_check.py
	$(CHECK_VENV)/bin/plunderctl lab up --help >/dev/null

unit: setup
	$(PY)/pytest tests/unit

# Regenerate the committed CRDs after changing the API models.
crds:
	$(PY)/plunderctl crds --output-dir config/crd/bases

# Rebuild the release components (infrastructure-components.yaml) after changing config/.
release:
	$(PY)/plunderctl release
