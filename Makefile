# Set-up contract: `make demo` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.imgclf-installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint fashion-mnist debian-packages web-runtime clean

install: $(STAMP)

# Re-installs only when the package metadata changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,log,labels,heif,openvino,parquet,litert]'
	touch $(STAMP)

demo: install
	$(BIN)/imgclf train digits --output runs/demo --overwrite
	@echo "Report: runs/demo/report.html (open it in a browser). Try: $(BIN)/imgclf evaluate runs/demo digits"

# The Fashion-MNIST tests need Debian's package, the web page test a real browser (chromium
# driven through chromium-driver) and the int8 test an emulated AVX2-only CPU (qemu-user's
# qemu-x86_64 -cpu Haswell); install them when we can (root on Debian).
DEBIAN_TEST_PACKAGES := dataset-fashion-mnist chromium chromium-driver qemu-user
debian-packages:
	@missing=""; for package in $(DEBIAN_TEST_PACKAGES); do \
		dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

fashion-mnist: debian-packages

# The web export's test runs onnxruntime-web (from npm) in Chromium: npm installs it into .web/
# (Debian's npm when there is none, as root). Its version is pinned: the page is tested with it.
ONNXRUNTIME_WEB_VERSION := 1.20.1
ORT_WEB := $(CURDIR)/.web/node_modules/onnxruntime-web/dist
web-runtime:
	@if [ ! -f $(ORT_WEB)/ort.wasm.min.js ]; then \
		if ! command -v npm >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; fi; \
		if command -v npm >/dev/null; then \
			npm install --silent --no-audit --no-fund --prefix .web onnxruntime-web@$(ONNXRUNTIME_WEB_VERSION); fi; \
	fi

test: install debian-packages web-runtime
	IMGCLF_ONNXRUNTIME_WEB=$(ORT_WEB) $(BIN)/python -m pytest -m "not gpu and not slow and not engines" $(PYTEST_ARGS)

# The Ray, Spark and Dask recipes in local mode: the engines are large (Ray 80 MB, Spark 460 MB and
# Java), so they are installed here and not by make install.
test-engines: install
	@if ! command -v java >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless; fi
	$(BIN)/python -m pip install --quiet -e '.[ray,spark,dask]'
	$(BIN)/python -m pytest -m engines $(PYTEST_ARGS)

test-all: install debian-packages web-runtime
	IMGCLF_ONNXRUNTIME_WEB=$(ORT_WEB) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

clean:
	rm -rf runs build dist src/*.egg-info .pytest_cache
