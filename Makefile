# The two commands of the README:
#   make lab    set up what is missing, start the lab (management plane, Cluster API, the
#               provider, the boot service, 3 blank hosts), then run the seed's walkthrough
#               (kubectl apply -f examples/simple/) to a working Kubernetes cluster on the hosts
#   make test   set up what is missing, then run every check and test (what CI runs)
.PHONY: lab lab-up lab-down setup test lint typecheck unit crds release

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

test: setup lint typecheck
	$(PY)/pytest -ra

unit: setup
	$(PY)/pytest tests/unit

# Regenerate the committed CRDs after changing the API models.
crds:
	$(PY)/plunderctl crds --output-dir config/crd/bases

# Rebuild the release components (infrastructure-components.yaml) after changing config/.
release:
	$(PY)/plunderctl release
