# Targets assume the virtualenv made by scripts/bootstrap.sh (which then calls make).
VENV ?= .venv
PY   := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test lint typecheck unit bench lab lab-down demo

test: lint typecheck
	@# pytest exits 5 when it collected no test: that is a failure of the suite, say so.
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

unit:
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench:
	$(PY) -m bench.run

# The main job: a 3-node cluster on this machine (network namespaces only), every workload
# pinging every other. It stays up for exploring; `make lab-down` removes it.
LAB_ARGS ?= --nodes 3 --workloads-per-node 2
lab:
	$(VENV)/bin/tabby-lab down >/dev/null 2>&1 || true
	$(VENV)/bin/tabby-lab up $(LAB_ARGS)
	$(VENV)/bin/tabby-lab status
	$(VENV)/bin/tabby-lab check
	@echo "The lab is running: try '.venv/bin/tabby-lab exec node1 -- ip route' or"
	@echo "'.venv/bin/tabby-lab exec node1 -- .venv/bin/tabbyctl node status'; remove it with 'make lab-down'."

lab-down:
	$(VENV)/bin/tabby-lab down

# The datastore demo: a private etcd, the example manifests applied with tabbyctl and listed back.
demo:
	bash scripts/demo.sh
