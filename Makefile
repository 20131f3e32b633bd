# Two commands for a fresh machine (see README): `make run` and `make test`.
# Both create their own virtualenv in .venv; nothing has to be installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test test-sqlite test-postgres check lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

## Serve the FHIR API on the embedded SQLite database at http://127.0.0.1:8080/fhir
run: $(VENV)/.installed
	$(BIN)/fhirserver serve

## The whole suite on SQLite, and again on PostgreSQL when FHIRSERVER_TEST_POSTGRES_URL is set.
test: $(VENV)/.installed
	$(MAKE) --no-print-directory test-sqlite
	@if [ -n "$$FHIRSERVER_TEST_POSTGRES_URL" ]; then \
		$(MAKE) --no-print-directory test-postgres; \
	else \
		echo "FHIRSERVER_TEST_POSTGRES_URL is not set: the PostgreSQL run is skipped."; \
	fi

test-sqlite: $(VENV)/.installed
	FHIRSERVER_TEST_BACKEND=sqlite $(BIN)/pytest -n 2 $(PYTEST_ARGS)

test-postgres: $(VENV)/.installed
	FHIRSERVER_TEST_BACKEND=postgres $(BIN)/pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check fhirserver tests bench
	$(BIN)/ruff format --check fhirserver tests bench
	$(BIN)/mypy fhirserver

check: lint test

## Benchmark (needs PostgreSQL; see docs/PERFORMANCE.md)
bench: $(VENV)/.installed
	$(BIN)/python bench/rest_benchmark.py

clean:
	rm -rf $(VENV) build *.egg-info fhirserver.db fhirserver.db-*
