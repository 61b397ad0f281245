# Two commands for a new user: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck services services-down bench soak clean

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

# Not part of `make test`: regenerates docs/benchmarks.md and its charts (~15 min; the services
# stay up). `make bench BENCH_ARGS=--quick` runs the reduced matrix. bench/tools.sh builds oha
# (crates.io) into the services cache on first use; Toxiproxy comes from scripts/services.sh.
# The micro-benchmarks (middleware_overhead, sampling_decide, cache_lookup) run by hand.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[all,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) services
	bench/tools.sh
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

# Not part of `make test` (its short variant is: tests/integration/test_soak_live.py): about five
# minutes of chat traffic to two API processes and two workers while seeded faults freeze, stop
# and kill Kafka, FerretDB, Redis, a worker and an API; then every answered request must be
# stored once. Regenerates docs/soak.md; exits 1 on a problem. `make soak SOAK_ARGS='--seed 7'`.
# It stops and restarts the services it runs on: docs/soak.md says how to give it its own.
soak: $(STAMP) services
	$(BIN)/python -m scripts.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
