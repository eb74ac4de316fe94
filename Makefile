# Two commands on a fresh machine:  `make run` (the main job)  and  `make test` (the test suite).
VENV  ?= .venv
PY    := $(VENV)/bin/python
# torch/torchvision pair that segment_anything imports; override for another platform.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# Backbone extras installed with the project (quick, pure-Python installs from PyPI).
EXTRAS ?= mobile_sam,hf_sam,efficientvit_sam
# The test command (README); .ci/run passes the same one explicitly.
PYTEST ?= python -m pytest -q -rs

.PHONY: install run test lint bench demo

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev,demo,$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# The main job: PerSAM, then PerSAM-F, with the defaults (embedded SAM, held-out synthetic split).
run: install
	$(PY) -m persam.run
	$(PY) -m persam.run method=persam_f task_name=persam_f

# The interactive page (persam/demo/) on http://127.0.0.1:$(PORT); Ctrl-C stops it.
PORT ?= 7860
demo: install
	$(PY) -m persam.demo port=$(PORT)

test: install
	$(VENV)/bin/$(PYTEST)

lint: install
	$(VENV)/bin/ruff check persam tests benchmarks && $(VENV)/bin/ruff format --check persam tests benchmarks
