# Every target creates or reuses the project's virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch is pinned to the CPU build that lies on disk here; installing it first
# means the package's looser requirement is already satisfied.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[experiments,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lunet train --dataset gmm2d --out runs/gmm2d-demo --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks reproduce scripts
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/lunet bench --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
