# contraseg: two commands on a fresh machine.
#   make quickstart   install into .venv, then pretrain SimCLR on the digit scenes (real
#                     handwritten digits, bundled with scikit-learn) and fine-tune and probe it
#                     with 1% labels against random init, 3 seeds (quickstart_digits table)
#   make test         install into .venv, then run ruff and the test suite
#   make docs         build the documentation site offline into site/ (mkdocs, material theme)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision must be a matching pair; the pinned one is tested on x86_64 (CPU and CUDA).
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
# a CPU-only machine: TORCH_INDEX=https://download.pytorch.org/whl/cpu (1.4 GB instead of 6 GB)
TORCH_INDEX ?=
# the install stamp names the pair, so another TORCH_PAIR reinstalls
empty :=
space := $(empty) $(empty)
STAMP := $(VENV)/.installed-$(subst $(space),_,$(subst ==,-,$(TORCH_PAIR)))

.PHONY: install quickstart test lint docs

$(STAMP): setup.cfg requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PAIR) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

quickstart: install
	$(PY) experiments/reproduce.py quickstart_digits --scale quick --seeds 3

lint: install
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -n 2 -q

docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site
