# ChancePay — the two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= $(shell scripts/find-python.sh)
# Local defaults (CONTRACT.md). `make run` provisions the databases and users through the
# admin URL (MariaDB's root over its unix socket, as Debian installs it).
export CHANCEPAY_ADMIN_DB ?= mysql://root@localhost/?unix_socket=/run/mysqld/mysqld.sock

.PHONY: run test services venv migrate bench soak lint clean help
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

test: services venv deploy-tools ## the whole test suite against real MariaDB, RabbitMQ and processes (tests/soak is opt-in)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: services venv ## throughput/latency benchmark; JSON results in .bench/
	$(PY) -m bench.run

include mk/deploy.mk

soak: services venv ## opt-in: seeded random faults during load (CHANCEPAY_SOAK_SEED=n replays, CHANCEPAY_SOAK_SECONDS)
	CHANCEPAY_SOAK=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/soak

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache build *.egg-info services/*.egg-info
