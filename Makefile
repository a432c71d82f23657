# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch 2.13.0 is the CPU build on this machine's disk; on a GPU machine set TORCH=torch (or a
# CUDA index's pin) to keep a CUDA build. pyproject.toml only asks for torch>=2.9.
TORCH ?= torch==2.13.0

# Installs Debian packages (as root, else through sudo) when a program the tests use is missing.
APT_INSTALL = $(if $(filter 0,$(shell id -u)),,sudo) sh -c 'apt-get update -qq && apt-get install -y -qq $(1)'

.PHONY: demo test test-fast test-deploy system-packages dev bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[test,deploy]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/leakage-pipeline demo

# The UI test drives Debian's Chromium (headless).
system-packages:
	command -v chromium >/dev/null || $(call APT_INSTALL,chromium)

# Every tier, as CI runs it; the slowest tests are listed at the end. --dist loadscope keeps a module's
# tests on one worker, so a module's expensive fixture (a whole audit, a training run) is built once.
test: $(STAMP) system-packages
	$(BIN)/ruff check leakage_pipeline leakage_pipeline_tests bench deploy
	$(BIN)/python -m pytest -n 2 --dist loadscope --durations=15 leakage_pipeline_tests

# The quick tier for daily work: everything but the tests marked slow (whole demo, UI, kill -9, training).
test-fast: $(STAMP)
	$(BIN)/ruff check leakage_pipeline leakage_pipeline_tests bench deploy
	$(BIN)/python -m pytest -n 2 --dist loadscope --durations=15 -m "not slow" leakage_pipeline_tests

# The deployment of deploy/ as real processes on 127.0.0.1 (Postgres from Debian's package, installed
# when missing; it runs as an unprivileged user), driven through the webserver's GraphQL API.
test-deploy: $(STAMP)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || $(call APT_INSTALL,postgresql)
	$(BIN)/python -m pytest -p no:cacheprovider -rA deploy/test_deploy.py

# The Dagster UI on 127.0.0.1:3000 over the demo data (run `make demo` once first).
dev: $(STAMP)
	mkdir -p .dagster_home
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

bench: $(STAMP)
	$(BIN)/python -m bench.hashing
	$(BIN)/python -m bench.hashing_memory
	$(BIN)/python -m bench.matching
	$(BIN)/python -m bench.training

clean:
	rm -rf $(VENV) .demo .dagster_home
