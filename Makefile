# ChancePay — the two commands a newcomer needs: `make run` and `make test` (and `make check`, the
# fast gate before a commit: no server needed).
SHELL := /bin/bash
# Two virtualenvs: .venv runs ChancePay (`make run`: runtime dependencies only, any Python >= 3.11,
# Debian 12's own included), .venv-test runs the suite (runtime + test tools; Python 3.12 when the
# machine has one, which helm-sdkpy needs, else the tests that need it skip and say so).
VENV ?= .venv
TEST_VENV ?= .venv-test
RUN_PYTHON ?= $(shell scripts/find-python.sh 3.11)
TEST_PYTHON ?= $(shell scripts/find-python.sh 3.12 2>/dev/null || scripts/find-python.sh 3.11)
PY := $(TEST_VENV)/bin/python
# Local defaults (CONTRACT.md), with one least-privilege user per schema. `make run` provisions the
# databases and users through the admin URL (MariaDB's root over its unix socket, as Debian
# installs it). Override any of them (and the ports) on the command line or in the environment.
export CHANCEPAY_ADMIN_DB ?= mysql://root@localhost/?unix_socket=/run/mysqld/mysqld.sock
export CHANCEPAY_ORCHESTRATOR_DB ?= mysql://chancepay_orchestrator:chancepay_orchestrator@127.0.0.1:3306/chancepay_orchestrator
export CHANCEPAY_WALLET_DB ?= mysql://chancepay_wallet:chancepay_wallet@127.0.0.1:3306/chancepay_wallet
ORCHESTRATOR_PORT ?= 8000
SCANNER_PORT ?= 8001
WALLET_PORT ?= 8002
AUDITOR_PORT ?= 8003

.PHONY: run reset check test test-debian12 test-chart test-unit test-support test-integration test-faults checkov services venv test-venv migrate bench bench-history soak lint clean help
.DEFAULT_GOAL := help

help: ## list targets (PYTEST_ARGS="-k x" passes pytest arguments to the test targets)
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## /\1\t/' | sort
	@echo
	@echo "make test installs from Debian what it needs and is missing (podman, catatonit, runc, debootstrap, promtool,"
	@echo "shellcheck: make test-tools), checkov into ~/.cache (make checkov), and .venv-test."
	@echo "make run installs from Debian MariaDB, RabbitMQ and python3-venv when missing, and .venv."
	@echo "Variables: PYTEST_ARGS, TEST_JOBS (1 = passes one after the other), ORCHESTRATOR_PORT, SCANNER_PORT,"
	@echo "WALLET_PORT, RUN_PYTHON, TEST_PYTHON, and every CHANCEPAY_* variable of the README."

# Every venv/tool step repairs itself: its marker (.installed) is written last and checked first,
# so a step interrupted half-way (a venv without pip, a partial install) is completed or redone
# by the next run, never trusted.
# The runtime venv: ChancePay and its runtime dependencies, nothing else (pip and setuptools are
# removed after the install, and the C sources some wheels ship): rebuilt from scratch (--clear)
# when its marker is missing or pyproject.toml changed.
$(VENV)/.installed: pyproject.toml
	@test -n "$(RUN_PYTHON)" || { echo "error: no Python >= 3.11 found (Debian 12: apt-get install python3)" >&2; exit 1; }
	scripts/ensure-venv-support.sh "$(RUN_PYTHON)"
	$(RUN_PYTHON) -m venv --clear $(VENV)
	$(VENV)/bin/python -m pip install -q --no-compile -e .
	$(VENV)/bin/python -m pip uninstall -q -y pip setuptools
	find $(VENV) -path '*/site-packages/*' -name '*.c' -delete
	touch $@

venv: $(VENV)/.installed ## the runtime virtualenv (.venv): ChancePay with its runtime dependencies only

$(TEST_VENV)/.installed: pyproject.toml
	@test -n "$(TEST_PYTHON)" || { echo "error: no Python >= 3.11 found" >&2; exit 1; }
	scripts/ensure-venv-support.sh "$(TEST_PYTHON)"
	$(PY) -m pip --version >/dev/null 2>&1 || $(TEST_PYTHON) -m venv --clear $(TEST_VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test-venv: $(TEST_VENV)/.installed ## the test virtualenv (.venv-test): ChancePay and the test tools

services: ## install (Debian packages) and start MariaDB and RabbitMQ if nothing listens on 3306/5672
	scripts/ensure-services.sh

migrate: services venv ## create databases, users and both schemas, and the broker's dead-lettering policy (idempotent)
	$(VENV)/bin/chancepay migrate
	$(VENV)/bin/python scripts/broker-policy.py

reset: ## drop what make run made: the two databases (every payment), their users, the two queues and the broker policy (servers keep running)
	scripts/reset-local.sh

run: migrate ## everything a fresh machine needs, then the three roles in the foreground (Ctrl-C stops all)
	@echo "ChancePay: API on http://127.0.0.1:$(ORCHESTRATOR_PORT) (scanner :$(SCANNER_PORT), wallet :$(WALLET_PORT), auditor :$(AUDITOR_PORT)). Ctrl-C stops all."
	exec $(VENV)/bin/chancepay dev --via-make --ports orchestrator=$(ORCHESTRATOR_PORT),scanner=$(SCANNER_PORT),wallet=$(WALLET_PORT),auditor=$(AUDITOR_PORT) \
		--roles orchestrator,scanner,wallet,auditor

# The tiers (docs/contributing.md): tests/unit needs no server (a socket guard fails any connect);
# tests/support and tests/bench test the harness and the benchmark; tests/deploy checks the
# packaging; tests/integration and tests/faults need MariaDB and RabbitMQ and run twice: against
# Debian 12's servers, and against the servers the Helm chart ships, started from its rendered
# StatefulSets (tests/support/servers.py); tests/chart runs the chart's installs with podman.
TIERS := tests/integration tests/faults
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
# What ruff checks and `ruff format --check` keeps formatted.
LINT_PATHS := services tests bench

# The two passes run side by side (each one mostly waits on its servers and timeouts): ~24 min on
# this 2-core machine instead of ~46. TEST_JOBS=1 runs them one after the other. Each pass's
# output is printed when it ends (--output-sync).
TEST_JOBS ?= 2
# checkov (the security scan of the rendered chart) lives in a venv of its own: its dependency pins
# would fight the project's. Kept under ~/.cache across clones, keyed by its version.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV ?= $(HOME)/.cache/chancepay/checkov-$(CHECKOV_VERSION)
export CHANCEPAY_CHECKOV := $(CHECKOV_VENV)/bin/checkov

$(CHECKOV_VENV)/.installed:
	@echo "installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (once)"
	$(CHECKOV_VENV)/bin/python -m pip --version >/dev/null 2>&1 || $(TEST_PYTHON) -m venv --clear $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q "checkov==$(CHECKOV_VERSION)"
	touch $@

checkov: $(CHECKOV_VENV)/.installed ## install checkov (security scan of the rendered chart) in a venv of its own

test: services test-venv test-tools checkov ## everything, in two passes side by side (PYTEST_ARGS applies to both); installs test tools first
	@echo "make test: pass test-debian12 and pass test-chart run side by side; each prints its output when it ends"
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target test-debian12 test-chart

test-debian12: services test-venv test-tools checkov ## pass 1: unit, harness and bench self-tests, deploy, integration, faults on Debian 12's MariaDB 10.11 + RabbitMQ 3.10
	CHANCEPAY_TEST_SERVERS=debian12 $(PYTEST) tests/unit tests/support tests/bench tests/deploy $(TIERS) $(PYTEST_ARGS)

test-chart: services test-venv test-tools ## pass 2: the chart run with podman (tests/chart), then integration, faults on its MariaDB 11.8 + RabbitMQ 4.0
	CHANCEPAY_TEST_SERVERS=chart $(PYTEST) tests/chart $(TIERS) $(PYTEST_ARGS)

# One verb per tier (make test runs them all, in its two passes).
test-unit: test-venv ## the unit tier alone (tests/unit): no server, any socket connect fails the test (~5 s)
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-support: test-venv ## the harness's and the benchmark's self-tests (tests/support, tests/bench; no server needed)
	$(PYTEST) tests/support tests/bench $(PYTEST_ARGS)

test-integration: services test-venv ## the integration tier alone, on Debian 12's servers (tests/integration)
	CHANCEPAY_TEST_SERVERS=debian12 $(PYTEST) tests/integration $(PYTEST_ARGS)

test-faults: services test-venv ## the fault tier alone, on Debian 12's servers (tests/faults)
	CHANCEPAY_TEST_SERVERS=debian12 $(PYTEST) tests/faults $(PYTEST_ARGS)

# The fast gate: every static check, then the unit tier; it needs no server. Each step runs even
# when an earlier one failed, so one run lists every finding; the exit status is the worst.
check: test-venv ## before a commit: ruff, ruff format --check, mypy --strict, the unit tier; no server (~15 s)
	@rc=0; $(MAKE) --no-print-directory lint || rc=1; $(MAKE) --no-print-directory test-unit || rc=1; exit $$rc

bench: services test-venv ## throughput/latency benchmark; JSON results in .bench/
	$(PY) -m bench.run

bench-history: services test-venv ## the benchmark again on tables pre-filled with 10 million finalized payments, compared with empty ones in the same run, interleaved with them and with batching off (~13 min before interleaving; longer now)
	$(PY) -m bench.run --history-rows 10000000

include mk/deploy.mk

soak: services test-venv ## opt-in: seeded random faults during load (CHANCEPAY_SOAK_SEED=n replays, CHANCEPAY_SOAK_SECONDS)
	CHANCEPAY_SOAK=1 $(PY) -m pytest -q -s -p no:cacheprovider tests/soak

lint: test-venv ## the static part of make check: ruff check and ruff format --check (services, tests, bench), mypy --strict (services)
	@rc=0; for step in "ruff check $(LINT_PATHS)" "ruff format --check $(LINT_PATHS)" "mypy --strict services/chancepay"; do \
		echo "$(PY) -m $$step"; $(PY) -m $$step || rc=1; \
	done; exit $$rc

clean: ## remove the virtualenvs and caches
	rm -rf $(VENV) $(TEST_VENV) .pytest_cache build *.egg-info services/*.egg-info
