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

# The main job. Until the multi-node lab exists: a local etcd, the example manifests applied
# with tabbyctl, and listed back.
lab: demo

demo:
	bash scripts/demo.sh
