# Two entry points: `make run` (set up, then the embedded default pipeline) and `make test`.
# Both are idempotent: the venv is (re)installed only when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch pair on this machine's disk; override for other platforms (see README).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,vtab,slurm,quant
STAMP := $(VENV)/.installed-$(shell echo "$(EXTRAS)" | tr ',' '-')

.PHONY: run test test-fast install clean-venv

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: $(STAMP)
	$(PY) run.py

# pytest exit code 5 (no tests collected) is a failure, not a pass.
PYTEST_RC5 = if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as failure" >&2; exit 1; fi; exit $$rc

test: $(STAMP)
	@$(PY) -m pytest; rc=$$?; $(PYTEST_RC5)

# The fast lane: everything but the end-to-end tests marked `slow` (pyproject.toml markers).
test-fast: $(STAMP)
	@$(PY) -m pytest -m "not slow"; rc=$$?; $(PYTEST_RC5)

clean-venv:
	rm -rf $(VENV)
