# Set-up contract (ARCHITECTURE.md section 1): `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imgclf-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint fashion-mnist clean

install: $(STAMP)

# Re-installs only when the package metadata changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/imgclf train digits --output runs/demo --overwrite
	@echo "Report: runs/demo/report.html (open it in a browser). Try: $(BIN)/imgclf evaluate runs/demo digits"

# The Fashion-MNIST tests need Debian's package; install it when we can (root on Debian).
fashion-mnist:
	@if [ ! -f $(FASHION_MNIST) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	fi

test: install fashion-mnist
	$(BIN)/python -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: install fashion-mnist
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf runs build dist src/*.egg-info .pytest_cache
