# ChancePay — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell scripts/find-python.sh)
# Local defaults (CONTRACT.md). `make run` provisions the databases and users through the
# admin URL (MariaDB's root over its unix socket, as Debian installs it).
export CHANCEPAY_ADMIN_DB ?= mysql://root@localhost/?unix_socket=/run/mysqld/mysqld.sock

.PHONY: run test test-debian12 test-chart checkov services venv migrate bench soak lint clean help
.DEFAULT_GOAL := help

help: ## list targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## /\1\t/' | sort

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## create the virtualenv and install ChancePay with its test dependencies

services: ## install (Debian packages) and start MariaDB and RabbitMQ if nothing listens on 3306/5672
	scripts/ensure-services.sh

migrate: services venv ## create databases, users and both schemas (idempotent)
	$(VENV)/bin/chancepay migrate

run: migrate ## everything a fresh machine needs, then the three roles in the foreground (Ctrl-C stops all)
	@echo "ChancePay: API on http://127.0.0.1:8000 (scanner :8001, wallet :8002). Ctrl-C stops all."
	exec $(VENV)/bin/chancepay dev

# The integration and fault tiers run twice: against Debian 12's servers, and against the servers
# the Helm chart ships, started from its rendered StatefulSets (tests/support/servers.py).
TIERS := tests/integration tests/faults
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

# The two passes run side by side (each one mostly waits on its servers and timeouts): ~12 min on
# this 2-core machine instead of ~21. TEST_JOBS=1 runs them one after the other. Each pass's
# output is printed when it ends (--output-sync).
TEST_JOBS ?= 2
# checkov (the security scan of the rendered chart) lives in a venv of its own: its dependency pins
# would fight the project's. Kept under ~/.cache across clones, keyed by its version.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV ?= $(HOME)/.cache/chancepay/checkov-$(CHECKOV_VERSION)
export CHANCEPAY_CHECKOV := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV_VENV)/.installed:
	@echo "installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (once)"
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q "checkov==$(CHECKOV_VERSION)"
	touch $@

checkov: $(CHECKOV_VENV)/.installed ## install checkov (security scan of the rendered chart) in a venv of its own

test: services venv test-tools checkov ## everything, in two passes side by side (PYTEST_ARGS applies to both); installs test tools first
	@echo "make test: pass test-debian12 and pass test-chart run side by side; each prints its output when it ends"
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-debian12 test-chart

test-debian12: services venv test-tools checkov ## pass 1: unit, deploy, integration, faults on Debian 12's MariaDB 10.11 + RabbitMQ 3.10
	CHANCEPAY_TEST_SERVERS=debian12 $(PYTEST) tests/unit tests/deploy $(TIERS) $(PYTEST_ARGS)

test-chart: services venv test-tools ## pass 2: the chart run with podman (tests/chart), then integration, faults on its MariaDB 11.8 + RabbitMQ 4.0
	CHANCEPAY_TEST_SERVERS=chart $(PYTEST) tests/chart $(TIERS) $(PYTEST_ARGS)

bench: services venv ## throughput/latency benchmark; JSON results in .bench/
	$(PY) -m bench.run

include mk/deploy.mk

soak: services venv ## opt-in: seeded random faults during load (CHANCEPAY_SOAK_SEED=n replays, CHANCEPAY_SOAK_SECONDS)
	CHANCEPAY_SOAK=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/soak

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info services/*.egg-info
