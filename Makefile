# Every target sets up what it needs: a fresh machine only needs python3 (3.11+) and, for Redis and
# Prometheus, apt-get.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit bench venv redis prometheus clean

demo: venv redis  ## Set up, then run the local demo (real Redis, real Celery workers, real autoscaling).
	$(BIN)/workerpool-operator demo

test: venv redis prometheus lint  ## Set up, then run lint, type checks and the whole test suite.
	$(BIN)/pytest

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,worker]'
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

lint: venv  ## ruff, mypy (strict), and actionlint on the GitHub workflows.
	$(BIN)/ruff check operator tests bench monitoring
	$(BIN)/ruff format --check operator tests bench monitoring
	$(BIN)/mypy
	$(BIN)/actionlint -color=never

unit: venv
	$(BIN)/pytest -q -x

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
