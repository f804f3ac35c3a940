# The README's commands. `make test` and `make demo` work on a fresh clone: they create .venv first.
# Only the test targets turn Ray's token auth off (tests/conftest.py does too); `make demo` runs
# the embedded Ray with Ray's default, token auth on.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Without CUDA, pin the CPU build of torch so pip never downloads a multi-GB CUDA wheel.
CONSTRAINTS := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: install test test-fast lint bench demo ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[dev]'
	touch $@

test: install
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -p no:cacheprovider --durations=15

test-fast: install
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m "not slow and not e2e"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m bench

demo: install
	$(VENV)/bin/sweep run sweep/specs/quickstart.yaml

ui: install
	$(VENV)/bin/sweep ui

clean:
	rm -rf $(VENV) build *.egg-info
