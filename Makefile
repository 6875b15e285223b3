# The two commands of the quick start:
#   make demo   set up .venv and run `whybox demo` on the bundled photos with the real ImageNet model
#   make test   set up .venv with the dev extra (peer libraries as oracles) and run the test suite
#
# torch is installed first, pinned to the CPU wheel this workplace keeps on disk; override with
# `make TORCH='torch==X.Y' ...` elsewhere. The project itself only asks for torch>=2.10.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[demo]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[demo,dev]"
	# pytorch-grad-cam and quantus (test oracles) pull torchvision / GUI opencv; their imports are in the dev extra
	$(PIP) install --no-deps "grad-cam>=1.5" "quantus==0.6.0"
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/whybox demo

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/gradient.py

clean:
	rm -rf $(VENV) whybox-demo .pytest_cache
