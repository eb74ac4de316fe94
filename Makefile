# Two commands on a fresh machine:  `make run` (the main job)  and  `make test` (the test suite).
#   make run          torch + the core package only, then PerSAM and PerSAM-F on the defaults
#   make install-all  every extra (dev, demo, fewshot, the backbone families) and SAM 2
#   make test         install-all, then the README's test command
#   make test-fast    the quick tests (-m "not slow") in the installed venv
VENV  ?= .venv
PY    := $(VENV)/bin/python
# torch/torchvision pair that segment_anything imports; override for another platform.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Every extra but sam2 (quick, pure-Python installs); names as pip normalises them (PEP 685).
EXTRAS ?= dev,demo,fewshot,mobile-sam,hf-sam,efficientvit-sam
SAM2 ?= 1
# The test command (README); `make test` runs it in the venv, .ci/run adds PYTEST_ARGS.
# pytest-xdist: one worker a core, at most 4 (each holds its models: ~1.5 GB); a test file
# runs on one worker, so its module fixtures (models, runs, cached episodes) are built once.
PYTEST ?= python -m pytest -q -rs -n auto --maxprocesses 4 --dist loadfile
PYTEST_ARGS ?=

.PHONY: install install-core install-all run test test-fast lint demo

# The core: torch, then the package with its required dependencies (what the main job needs).
$(VENV)/.core: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e .
	touch $@

# Everything the tests use: the extras, then SAM 2 (persam[sam2]) built from source: against
# this venv's torch, without its CUDA extension (pip's isolated build would fetch another
# torch). SAM2=0 skips it (its tests then skip).
$(VENV)/.all: $(VENV)/.core
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	[ "$(SAM2)" = "0" ] || SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-build-isolation "sam2>=1.1"
	touch $@

$(VENV)/.demo: $(VENV)/.core
	$(PY) -m pip install -q -e ".[demo]"
	touch $@

install-core: $(VENV)/.core
install-all: $(VENV)/.all
install: install-all

# The main job: PerSAM, then PerSAM-F, with the defaults (embedded SAM, held-out synthetic split).
run: install-core
	$(PY) -m persam.run
	$(PY) -m persam.run method=persam_f task_name=persam_f

# The interactive page (persam/demo/) on http://127.0.0.1:$(PORT); Ctrl-C stops it.
PORT ?= 7860
demo: $(VENV)/.demo
	$(PY) -m persam.demo port=$(PORT)

test: install-all
	$(VENV)/bin/$(PYTEST) $(PYTEST_ARGS)

test-fast: install-all
	$(VENV)/bin/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile -m "not slow" $(PYTEST_ARGS)

lint: install-all
	$(VENV)/bin/ruff check persam tests benchmarks && $(VENV)/bin/ruff format --check persam tests benchmarks
