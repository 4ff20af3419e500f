VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.snnc-installed

.PHONY: install demo lint test test-all apps fuzz clean

# Idempotent: re-runs pip only when the packaging or native sources changed.
install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard snncompiler/kernels/csrc/*)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: install
	$(PY) -m examples.demo

# lint and format are checked on the whole tree before the tests (ruff, configured in pyproject.toml)
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install lint
	$(PY) -m pytest -q

# The example apps' full runs (each rewrites its apps/NAME/results.json).
apps: install
	$(PY) -m apps.medical.imaging_planes
	$(PY) -m apps.medical.lowshot_seg
	$(PY) -m apps.finance.stock_movement
	$(PY) -m apps.sparse_conv.sdconv
	$(PY) -m apps.medical.concept_classifier
	$(PY) -m apps.medical.registration

# 3,000 seeded mutations of an ONNX model, an artifact, an .npz and a .nir, each run through the CLI
# under a memory limit and a timeout; prints the table of case kind x outcome (see README, Reliability).
FUZZ_CASES ?= 3000
FUZZ_SEED  ?= 1
fuzz: install
	$(PY) tests/fuzz/driver.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED) --jobs 2

# Everything, including the slow variants (all torchvision architectures at two opsets).
test-all: install
	$(PY) -m pytest -q -m ''

clean:
	rm -rf build *.egg-info snncompiler/kernels/*.so .pytest_cache
