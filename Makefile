# Two commands do everything on a fresh Debian 12 machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := mosquitto mosquitto-clients influxdb victoria-metrics postgresql python3-venv chromium fonts-noto-cjk systemd
STAMP := $(VENV)/.installed

.PHONY: demo test deps venv lint bench soak clean services-up services-down

demo: deps venv ## Start servers, collector, API and a simulated campus (Ctrl-C stops)
	$(BIN)/campusmon demo -c deploy/campus.yaml

COMPOSE_SCHEMA := $(VENV)/share/campusmon-test/docker_compose-1.29.2-py2.py3-none-any.whl

test: deps venv $(COMPOSE_SCHEMA) ## Lint, then the whole suite against real Mosquitto and InfluxDB
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider

deps: ## Debian packages for the local servers (apt-get update first: fresh package lists are empty)
	@missing=""; for p in mosquitto mosquitto_sub influxd victoria-metrics; do command -v $$p >/dev/null || [ -x /usr/sbin/$$p ] || missing=1; done; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing=1; \
	command -v chromium >/dev/null || missing=1; command -v systemd-analyze >/dev/null || missing=1; \
	fc-list 2>/dev/null | grep -qi 'Noto Sans CJK' || missing=1; \
	$(PY) -c 'import ensurepip, venv' 2>/dev/null || missing=1; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	  $$SUDO systemctl disable --now mosquitto influxdb victoria-metrics postgresql >/dev/null 2>&1 || true; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The Compose Specification schema the compose file is checked against ships inside this wheel;
# the package itself is not installed (its pins conflict with ours).
$(COMPOSE_SCHEMA): | venv
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d $(VENV)/share/campusmon-test docker-compose==1.29.2

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: deps venv ## Ingest, bus, query, alert, rollup, console and auth benchmarks (numbers in README; bench/sizing.py and soak run apart)
	for b in ingest parse bus gateway_mem query alerts rollups console auth protocols; do $(BIN)/python bench/$$b.py || exit 1; done

soak: deps venv ## Every fault scaled down, about 7 min (root: a tmpfs for the outbox); --minutes 48 for the full run
	$(BIN)/python bench/soak.py --minutes 6

services-up: deps venv
	$(BIN)/campusmon services up -c deploy/campus.yaml

services-down: venv
	$(BIN)/campusmon services down -c deploy/campus.yaml

clean:
	rm -rf var .pytest_cache
