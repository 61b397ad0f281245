# Two commands for a new user: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck services services-down bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/widelog demo

# The real services (Redis, Kafka, FerretDB on 127.0.0.1) stay up after the run; `make services-down`.
test: $(STAMP) lint typecheck services
	$(BIN)/python -m pytest

services:
	scripts/services.sh up

services-down:
	scripts/services.sh down

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) services
	$(BIN)/python bench/middleware_overhead.py
	$(BIN)/python bench/sampling_decide.py
	$(BIN)/python bench/publish_hot_path.py
	$(BIN)/python bench/cache_lookup.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
