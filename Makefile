# telemetry-ingest: every command a developer needs. `make run` and `make test` are all a fresh
# machine with python3 (>= 3.11) and make needs; uv is installed on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help
UV ?= $(shell command -v uv 2>/dev/null || echo .cache/uv-venv/bin/uv)
PYTEST_ARGS ?=

.PHONY: help install run redis test test-unit lint format bench bench-quick up down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(UV):
	@echo "installing uv into .cache/uv-venv"
	@python3 -m venv .cache/uv-venv 2>/dev/null && .cache/uv-venv/bin/pip install -q uv \
	  || { rm -rf .cache/uv-venv; mkdir -p .cache/uv-venv/bin; \
	       python3 -m pip install -q --target .cache/uv-venv/lib uv \
	       && ln -sf ../lib/bin/uv .cache/uv-venv/bin/uv; }

.venv/.synced: $(UV) uv.lock pyproject.toml shared/pyproject.toml producer/pyproject.toml worker/pyproject.toml devtools/pyproject.toml
	$(UV) sync --all-packages --frozen
	@touch $@

install: .venv/.synced ## install the workspace and dev tools into .venv

run: install ## local Redis (TimeSeries, AOF on, data in .run/) + producer on :8080 + one worker; Ctrl-C stops all
	$(UV) run --frozen python -m ingest_devtools.supervisor

redis: install ## only the local Redis Stack server on :6379 (foreground)
	$(UV) run --frozen python -m ingest_devtools.localredis --port 6379 --dir .run/redis --appendonly

test: install ## the whole test suite against a real Redis the tests start themselves
	$(UV) run --frozen pytest $(PYTEST_ARGS)

test-unit: install ## unit tests only
	$(UV) run --frozen pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy --strict
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy

format: install ## apply ruff's fixes and formatting
	$(UV) run --frozen ruff check --fix .
	$(UV) run --frozen ruff format .

bench: install ## the benchmark suite (installs wrk): prints a table, writes bench/results/<date>.{json,md}
	$(UV) run --frozen python -m bench.run

bench-quick: install ## a ~40 s run of the benchmark suite, one repetition, nothing written
	$(UV) run --frozen python -m bench.run --quick --no-write

up: ## with Docker: Redis 8 + producer + worker (scale with: docker compose up --scale worker=3)
	docker compose up --build

down: ## stop the compose stack
	docker compose down

clean: ## remove local state (.run/ data, caches, .venv)
	rm -rf .run .venv .mypy_cache .ruff_cache .pytest_cache
