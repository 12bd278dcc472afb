# contraseg: two commands on a fresh machine.
#   make quickstart   install into .venv, then pretrain SimCLR on the embedded synthetic data
#   make test         install into .venv, then run ruff and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision must be a matching pair; the pinned one is tested on x86_64 (CPU and CUDA).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install quickstart test lint

$(VENV)/.installed: setup.cfg requirements/constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(PY) experiments/run.py fit --config experiments/configs/quickstart.yaml

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n 2 -q
