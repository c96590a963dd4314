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

.PHONY: test demo lint venv clean bench

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

# Every benchmark, each in its own process, in under 15 minutes on the 2-core build machine; it
# rewrites the generated block of benchmarks/RESULTS.md. The `bench` extra (transformers,
# accelerate) goes through constraints.txt too, and torch must still be 2.13.0 afterwards.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PY) -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
	print('\n'.join(p['optional-dependencies']['bench']))" > $(VENV)/requirements-bench.txt
	$(PIP) -r $(VENV)/requirements-bench.txt
	$(PY) -c "import torch; v = torch.__version__.split('+')[0]; \
	assert v == '2.13.0', f'the bench extra changed torch to {v}'"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	PYTHONPATH=. $(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
