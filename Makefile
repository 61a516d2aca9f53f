# Two entry points for a fresh machine: `make demo` and `make test`. Both create the virtual
# environment in .venv and install everything first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision builds we test with. Set TORCH_PKGS= to keep what your environment has.
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(strip $(TORCH_PKGS)),$(PY) -m pip install -q $(TORCH_PKGS))
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/affinitynet demo

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) work .pytest_cache
