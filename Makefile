# Each target creates .venv itself; a fresh clone needs only python3 (3.11+) and make.
# The interpreter .venv is made from (`make PYTHON=python3.13 test` chooses another): the
# first Python 3.11+ with venv support of the distribution's /usr/bin/python3 and python3 on
# PATH. Debian's python3.11 is one statically linked executable; the pyenv build on PATH here
# is a shared-library build (--enable-shared, no --enable-optimizations), and runs the tests
# 8-15% slower (alternated runs of the suite).
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do \
	$$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test lint bench clean postgres-server

$(PY):
	@test -n "$(PYTHON)" || { echo "no Python 3.11+ with venv found: install one, or make PYTHON=..." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP_RUN): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP_TEST): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(STAMP_RUN)

demo: $(STAMP_RUN)
	$(VENV)/bin/openrouter-usage demo

lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check bot tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Compiled modules are cached (even where the environment says not to write them): every test
# worker, every CLI and daemon subprocess and each clock run would otherwise compile the
# package and rewrite the test modules again. `test` fills the cache in one process before
# the workers start (the package; the test modules, whose asserts pytest rewrites, and the
# bundled templates, by collecting the tests; a collection error shows in the run after it):
# on a fresh clone the five workers each compiled all of it at once, 10-13 s of CPU and 5-6 s
# of the run's wall time.
unexport PYTHONDONTWRITEBYTECODE

# Test workers: twice the cores and one more, as most tests spend half their time waiting on
# sockets, subprocesses and PostgreSQL (on 2 cores, 5 workers left the cores idle 2.2-2.4
# core-seconds of a run, 4 workers 5.5-6.2; pyproject's default for a bare `pytest` is one
# per core).
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) * 2 + 1 )))

# The suite at its default instant, then the tests that take the `clock` fixture again at
# 00:10 UTC, 23:58 UTC and on a DST-change day (tests/conftest.py; `pytest --clock=midnight`
# runs the whole suite at one of them).
test: lint postgres-server
	$(PY) -m compileall -q bot
	-$(VENV)/bin/pytest --collect-only -q -n 0 >/dev/null 2>&1
	$(VENV)/bin/pytest -n $(TEST_WORKERS)
	$(VENV)/bin/pytest -m clock --clock=midnight
	$(VENV)/bin/pytest -m clock --clock=late
	$(VENV)/bin/pytest -m clock --clock=dst

# The store's tests also run on a throw-away PostgreSQL server that they start themselves
# (tests/pg_server.py) from the server binaries; as root on Debian/Ubuntu, install them where
# missing. Without them the PostgreSQL tests fail (they never skip silently).
postgres-server:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
	|| if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the PostgreSQL server for the tests (apt-get install postgresql)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	else \
		echo "PostgreSQL server binaries not found: install postgresql (the tests need it)" >&2; \
		exit 1; \
	fi

bench: $(STAMP_TEST) postgres-server
	$(PY) bench/bench_report.py
	$(PY) bench/bench_history.py --keys 560
	$(PY) bench/bench_pg_writes.py
	$(PY) bench/bench_templates.py
	$(PY) bench/bench_chart.py
	$(PY) bench/bench_http.py
	$(PY) bench/bench_suite.py

clean:
	rm -rf $(VENV) build *.egg-info
