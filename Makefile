# The README names these targets. `make test` installs everything the tests need.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DEBS := gearman-job-server gearman-tools php-cli php-gearman libgearman-client-perl prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run deps-test test unit lint bench

install:
	$(PIP) install -q -e .

run: install
	farm up

deps-test:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	$(PIP) install -q -e '.[test]'
	@# atheris (coverage-guided fuzzing) only where it has a wheel; its test skips otherwise.
	-$(PIP) install -q atheris 2>/dev/null || echo "atheris did not install; the atheris fuzz test will skip"

test: deps-test
	FARM_REQUIRE_INTEROP=1 $(PYTHON) -m pytest -q

# The fast loop: the unit tests alone (seconds; no servers, no Debian packages).
unit:
	$(PYTHON) -m pytest -q tests/unit

# ruff (lint and format) over everything, mypy --strict over farm/ (config in pyproject.toml).
lint:
	ruff check farm workers tests bench
	ruff format --check farm workers tests bench
	$(PYTHON) -m mypy

BENCHES := server_load server_cost durable_enqueue bench_client bench_executor hop_floor bench_supervisor

# Each benchmark measures farm beside its peer (gearmand, PHP, ProcessPoolExecutor) in one run.
bench: deps-test
	@for b in $(BENCHES); do echo "== bench.$$b"; $(PYTHON) -m bench.$$b || exit 1; done
