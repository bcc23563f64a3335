# Kubernetes packaging targets; included from the main Makefile, which defines VENV and PY.
#   make test-tools    install what the tests need from Debian (promtool, shellcheck, podman, catatonit, runc, debootstrap)
#   make render-k8s    regenerate k8s/manifests/ and deploy/ copies from the chart
#   make kind-up       kind cluster + images + helm install + smoke payment + helm test
#   make kind-down     delete that kind cluster
#   make test-deploy   only the deploy checks (tests/deploy)

.PHONY: test-tools render-k8s kind-up kind-down test-deploy

test-tools: ## apt-get install what the tests need and is missing: promtool, shellcheck, podman, catatonit, runc, debootstrap
	bash scripts/install-test-tools.sh

render-k8s: test-venv ## regenerate k8s/manifests/ and deploy/ copies from the chart
	$(PY) scripts/render-k8s.py

kind-up: ## kind cluster + images + helm install + smoke payment + helm test (needs Docker, kind, helm)
	bash scripts/kind-up.sh

kind-down: ## delete the kind cluster
	bash scripts/kind-down.sh

test-deploy: services test-tools test-venv checkov ## the deploy tier alone (tests/deploy; its two live checks run roles on Debian 12's servers)
	CHANCEPAY_TEST_SERVERS=debian12 $(PYTEST) tests/deploy $(PYTEST_ARGS)
