# The two Quick start commands: `make demo` and `make test`.
# Both create .venv on first use and install the project with its test extras,
# so they work on a fresh machine that has only Python 3.11+ and make.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A separate environment for the real KServe v2 server the fallback tests talk to:
# kserve pins psutil<6 and protobuf<7, which the project's own environment must not get.
KSERVE_VENV := .venv-kserve
KSERVE_STAMP := $(KSERVE_VENV)/.installed

.PHONY: demo test lint typecheck unit integration browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(KSERVE_STAMP):
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(KSERVE_VENV)/bin/pip install --quiet 'kserve>=0.15' onnxruntime numpy
	touch $(KSERVE_STAMP)

# The dashboard's browser test drives Debian's chromium through chromedriver. CI runs
# `make test` as root on a clean machine: install both there when chromium is missing.
# Elsewhere (not root, no apt-get) the test skips and says why.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver for the dashboard's browser test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium chromium-driver >/dev/null || \
	    echo "note: could not install chromium; the dashboard's browser test will skip"; \
	  else \
	    echo "note: no /usr/bin/chromium; the dashboard's browser test will skip" \
	         "(as root: apt-get install chromium chromium-driver)"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/edge-runtime demo

lint: $(STAMP)
	$(BIN)/ruff check edge_runtime partitioner transports devices examples tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck $(KSERVE_STAMP) browser
	$(BIN)/python -m pytest -q -ra tests

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP) $(KSERVE_STAMP) browser
	$(BIN)/python -m pytest -q tests/integration

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .mypy_cache .ruff_cache .pytest_cache
