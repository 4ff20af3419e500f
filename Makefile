VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.snnc-installed

.PHONY: install demo test test-all apps clean

# Idempotent: re-runs pip only when the packaging or native sources changed.
install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(PY) -m snncompiler.demo

test: install
	$(PY) -m pytest -q

# The example apps' full runs (each rewrites its apps/NAME/results.json).
apps: install
	$(PY) -m apps.medical
	$(PY) -m apps.finance.stock_movement
	$(PY) -m apps.sparse_conv.sdconv

# Everything, including the slow variants (all torchvision architectures at two opsets).
test-all: install
	$(PY) -m pytest -q -m ''

clean:
	rm -rf build *.egg-info snncompiler/*.so .pytest_cache
