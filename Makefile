# The README names these targets. `make test` installs everything the tests need; `make unit`
# and `make lint` what they run (deps-dev).
#
# Debian's and Ubuntu's own python3 refuse `pip install` outside a virtualenv (PEP 668:
# "externally-managed-environment"). With such a python3, and no virtualenv active,
# the targets make ./.venv once and install into it, so the README's two commands still
# work as written on a fresh machine; the other terminals then `. .venv/bin/activate`.
SYSTEM_PYTHON ?= python3
MANAGED := $(shell $(SYSTEM_PYTHON) -c 'import os, sys, sysconfig; \
  print(int(sys.prefix == sys.base_prefix and os.path.exists(os.path.join( \
  sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))' 2>/dev/null)
ifeq ($(MANAGED),1)
PYTHON ?= .venv/bin/python
VENV := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)
else
PYTHON ?= $(SYSTEM_PYTHON)
VENV :=
endif
PIP ?= $(PYTHON) -m pip
DEBS := gearman-job-server gearman-tools php-cli php-gearman libgearman-client-perl prometheus
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run deps-dev deps-test test unit libs lint bench

install: $(VENV)
	$(PIP) install -q -e .

run: install
	farm up

# Only made where the system's python3 is externally managed (above). Debian ships the
# venv module's pip apart, in python3-venv.
.venv/bin/python:
	$(SYSTEM_PYTHON) -m venv .venv || { \
	  echo "installing python3-venv"; rm -rf .venv; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q python3-venv \
	  && $(SYSTEM_PYTHON) -m venv .venv; }

# What `make unit` and `make lint` run: the package's dependencies and its `test` extra
# (pytest, ruff, mypy), into the python in use (./.venv where the system's is externally
# managed, as `make run` does), by pip alone: no Debian packages, which only `make test`
# needs. pip runs only when one of them is missing or older than pyproject.toml asks, so a
# second run costs a fraction of a second and needs no network. The requirements are read
# with packaging, else pip's own copy of it; with neither (a uv-made virtualenv has no pip),
# one installed at all is met. A python with no pip, a requirement missing: one line says
# so (exit 3, make's 2), where `python -m pip` said "No module named pip" alone.
DEV_DEPS_MET := import os, re, sys, tomllib; from importlib import import_module; \
  from importlib.metadata import distributions, version; from importlib.util import find_spec; \
  p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
  texts = p["dependencies"] + p["optional-dependencies"]["test"]; \
  norm = lambda name: re.sub(r"[-_.]+", "-", name).lower(); \
  have = {norm(d.metadata["Name"] or "") for d in distributions()}; \
  found = "packaging" if find_spec("packaging") else "pip._vendor.packaging" if find_spec("pip") else None; \
  Req = found and import_module(found + ".requirements").Requirement; \
  unmet = [str(r) for r in map(Req, texts) if (r.marker is None or r.marker.evaluate()) \
    and not (norm(r.name) in have and r.specifier.contains(version(r.name), prereleases=True))] \
    if Req else [t for t in texts if norm(re.match(r"[A-Za-z0-9._-]+", t)[0]) not in have]; \
  nopip = bool(unmet) and os.environ.get("DEPS_PIP", "").endswith(" -m pip") and not find_spec("pip"); \
  listed, are, them = ", ".join(unmet), "are" if len(unmet) > 1 else "is", "them" if len(unmet) > 1 else "it"; \
  nopip and print(f"make: {listed} {are} not installed, and {sys.executable} has no pip to install {them}:" \
    " install the test extra with another installer, e.g. uv pip install -e \".[test]\""); \
  raise SystemExit(3 if nopip else bool(unmet))

# Any doubt of the check (its traceback hidden) is a missing one, for pip to install.
deps-dev: export DEPS_PIP := $(PIP)
deps-dev: $(VENV)
	@$(PYTHON) -c '$(DEV_DEPS_MET)' 2>/dev/null || { [ $$? = 3 ] && exit 2; } || $(PIP) install -q -e '.[test]'

deps-test: $(VENV)
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi
	$(PIP) install -q -e '.[test]'
	@# atheris (coverage-guided fuzzing) only where it has a wheel; its test skips otherwise.
	-$(PIP) install -q atheris 2>/dev/null || echo "atheris did not install; the atheris fuzz test will skip"

# Two passes: the tests that may run beside others, split among TEST_JOBS pytest-xdist
# workers (a file's tests on one worker, so a module's fixture is made once); then those
# marked `serial` (port 4730, farm's defaults, measured time or CPU), one at a time. Both
# run, whatever the first gives; the target fails if either does. Most tests wait on
# processes starting, not on the CPU: 3 workers finish first on 2 cores.
TEST_JOBS ?= 3

test: deps-test
	@status=0; \
	FARM_REQUIRE_INTEROP=1 $(PYTHON) -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not serial" \
	  || status=$$?; \
	FARM_REQUIRE_INTEROP=1 $(PYTHON) -m pytest -q -m serial || status=$$?; \
	exit $$status

# The fast loop: the unit tests alone (seconds; no servers, no Debian packages).
unit: deps-dev
	$(PYTHON) -m pytest -q tests/unit

# The integration tests of the libraries a program imports (farm.Executor, farm.Worker, the
# clients, joblib's backend) against a real server and real workers, which run under the
# same Python (a few minutes; no Debian packages): run them under a newer Python than `make
# test`'s (`make libs PYTHON=.venv-3.13/bin/python`), where threads, fork and pickling have
# changed before. CI runs them so (.ci/newer-python), after the unit tests.
LIB_TESTS := $(addprefix tests/integration/,test_executor*.py test_worker*.py test_client*.py \
  test_aio*.py test_async_functions.py test_joblib.py)

libs: deps-dev
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "not serial" $(LIB_TESTS)

# ruff (lint and format) over everything, mypy --strict over farm/ and workers/ (config in
# pyproject.toml). ruff as a module of the python in use: the one deps-dev installed, which
# a python3 outside a virtualenv may have put in a bin directory that is not on PATH.
lint: deps-dev
	$(PYTHON) -m ruff check farm workers tests bench
	$(PYTHON) -m ruff format --check farm workers tests bench
	$(PYTHON) -m mypy

BENCHES := server_load server_cost durable_enqueue bench_client bench_executor hop_floor bench_supervisor

# Most put farm beside its peer (gearmand, PHP, ProcessPoolExecutor) in one run; README.md
# says what each measures.
bench: deps-test
	@for b in $(BENCHES); do echo "== bench.$$b"; $(PYTHON) -m bench.$$b || exit 1; done
