# Two commands on a fresh clone: `make run` (the main job on the embedded default:
# portal replica + DuckDB) and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup run test lint bench bench-freshness replica cluster cluster-stop clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements.lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt -c requirements.lock.txt
	$(PY) -m pip install -q --no-deps -e .
	# Byte-compiled once here, as pip does for the dependencies: with PYTHONDONTWRITEBYTECODE
	# set (it is on the machines here) every process would compile etl again (~0.3 s each
	# `etl run`, each Airflow task, each test subprocess).
	$(PY) -m compileall -q etl dags bench deploy tests > /dev/null
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m etl.demo

# The suite in parallel: pytest-xdist, whole files per worker (module fixtures computed
# once), the longest files first (tests/conftest.py); each worker has its own temp dirs,
# databases and Airflow home. One worker more than there are cores: some files mostly
# wait (the cluster test sits out a 60 s heartbeat timeout and a 20 s retry delay; the
# hostile corpus waits out hangs), and the extra worker keeps the cores busy meanwhile
# (README "Running the tests").
# `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print((os.cpu_count() or 1) + 1)')
test: $(STAMP) $(CHROMIUM) lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --durations=20

# The report's browser tests drive Debian's chromium through Playwright (which never
# downloads a browser of its own here): installed on first use, as root or through sudo.
$(CHROMIUM):
	$$([ "$$(id -u)" = 0 ] || echo sudo) apt-get update
	$$([ "$$(id -u)" = 0 ] || echo sudo) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

lint: $(STAMP)
	$(VENV)/bin/ruff check etl dags tests bench deploy
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.scrape
	$(PY) -m bench.validate
	$(PY) -m bench.load
	$(PY) -m bench.cycle

# About 13 minutes: a real scheduler against the live replica (kept out of `make bench`).
bench-freshness: $(STAMP)
	$(PY) -m bench.freshness

replica: $(STAMP)
	$(PY) -m etl.replica --scenario kg2021 --port 8765

# A CeleryExecutor cluster on this machine (PostgreSQL + Redis on 127.0.0.1, api-server on
# CLUSTER_PORT, scheduler, dag-processor, triggerer, two Celery workers); state and logs in
# data/cluster. `make cluster CLUSTER_ARGS="--workers 3"`: see `python -m deploy.cluster -h`.
CLUSTER_PORT ?= 8080
cluster: $(STAMP)
	$(PY) -m deploy.cluster start --api-port $(CLUSTER_PORT) $(CLUSTER_ARGS)

cluster-stop: $(STAMP)
	$(PY) -m deploy.cluster stop $(CLUSTER_ARGS)

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
