# Mercato: `make run` starts the platform on its embedded defaults; `make test` runs the
# checks and the test suite against PostgreSQL and RabbitMQ. See README.md.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint typecheck audit check bench fuzz install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps make the second `make` skip pip; they are rebuilt when the pins change.
$(VENV)/.run-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@ $(VENV)/.run-installed

install: $(VENV)/.run-installed
install-dev: $(VENV)/.dev-installed

run: $(VENV)/.run-installed
	HOST=$(HOST) PORT=$(PORT) $(BIN)/flask --app app mercato serve

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy (strict) against mypy-baseline.txt, a list that only shrinks
typecheck: $(VENV)/.dev-installed
	MYPY=$(BIN)/mypy $(BIN)/python scripts/mypy-baseline

# pip-audit on the locked dependencies (constraints.txt)
audit: $(VENV)/.dev-installed
	PIP_AUDIT=$(BIN)/pip-audit $(BIN)/python scripts/audit-dependencies

check: lint typecheck audit

# The OpenID Connect server the single sign-on tests run (oidc-provider, from the lock file).
OIDC_TEST_SERVER := tests/oidc/node_modules/.installed
$(OIDC_TEST_SERVER): tests/oidc/package.json tests/oidc/package-lock.json
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: $(VENV)/.dev-installed check $(OIDC_TEST_SERVER)
	scripts/ensure-system-packages test
	PYTHON=$(BIN)/python scripts/fetch-ubl-schema $(VENV)/share/ubl-2.1
	$(BIN)/pytest

$(VENV)/.bench-installed: pyproject.toml constraints.txt $(VENV)/.dev-installed
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	scripts/ensure-system-packages bench
	$(BIN)/python -m bench
	$(BIN)/python -m bench.logo
	$(BIN)/python -m bench.orders
	$(BIN)/python -m bench.deployer
	$(BIN)/python -m bench.billing
	$(BIN)/python -m bench.usage
	$(BIN)/python -m bench.soak

# the API fuzzing test at full length: 200 examples per operation and role, plus
# schemathesis's coverage phase (make test runs 5, without it)
fuzz: $(VENV)/.dev-installed
	MERCATO_FUZZ_EXAMPLES=200 MERCATO_FUZZ_PHASES=examples,coverage,fuzzing $(BIN)/pytest -s --timeout=0 -p no:logging tests/test_fuzz.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tests/oidc/node_modules
