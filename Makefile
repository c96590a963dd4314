# `make test` and `make demo` build .venv from nothing; every install goes through constraints.txt
# so pip never swaps the CPU torch for a CUDA build.
#
# The venv gets the library's *dependencies* only, never the library itself: tests import `utils`
# from the checkout (pytest's pythonpath), so a process started anywhere else cannot import it,
# which is what Colab looks like to a notebook uploaded alone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --constraint constraints.txt
STAMP := $(VENV)/.installed
REQS := $(VENV)/requirements-dev.txt

.PHONY: test demo lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(p['dependencies'] + p['optional-dependencies']['dev']))" > $(REQS)
	$(PIP) -r $(REQS)
	$(PY) -m pip uninstall --quiet --yes transformer-training 2>/dev/null || true
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m utils.training demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
