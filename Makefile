# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (pinned by requirements.lock) when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= build/demo

.PHONY: install demo test lint format lock clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ctscribe needs Python >= 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/ctscribe demo --out $(DEMO_DIR)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

test: lint chromium
	$(BIN)/python -m pytest

# Debian's chromium for the browser test of the web page (tests/serve/test_web.py drives it with
# Playwright; Playwright's own browser download is never used). Without apt-get the test is skipped
# (and fails under CI=true).
chromium:
	@test -x /usr/bin/chromium || { \
	  if ! command -v apt-get >/dev/null; then \
	    echo "chromium: no apt-get here; the browser test will be skipped"; exit 0; fi; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends chromium; }

# Re-resolve the newest versions the ranges in pyproject.toml allow and pin them.
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --disable-pip-version-check '.[dev]' 'torch==2.14.1' 'torchvision==0.29.*'
	(echo '# Exact versions for CI and make install; regenerate with make lock.'; \
	 build/lock-venv/bin/python -m pip freeze --exclude ctscribe) > requirements.lock
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
