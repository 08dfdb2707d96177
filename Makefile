# netad: `make run` (demo end to end), `make test` (the whole suite) and `make test-fast`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
NETAD  := $(BIN)/netad
CONFIG ?= configs/default.yaml
VAR    ?= var
# pytest-xdist: each test file on one worker so module fixtures are built once; PYTEST_JOBS=
# runs serially. Three workers on this project's 2-core machines: a fifth of the suite's test
# time is waiting (daemons replaying the demo at a set pace, Kafka rebalances), which a third
# worker fills with CPU work: 490.53 s against 542.24 s with two, one after the other here
PYTEST_JOBS ?= -n 3 --dist loadfile

.PHONY: run test test-fast fuzz install install-test demo-data model clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and pinned, so nothing later resolves an unpinned
# torch to the multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e . "$(TORCH)"
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]" "$(TORCH)"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VAR)/demo.pcap: | $(VENV)/.installed
	$(NETAD) synth --out $(VAR)/demo.pcap --truth $(VAR)/demo_truth.csv

$(VAR)/model/model.json: | $(VAR)/demo.pcap
	$(NETAD) train -c $(CONFIG) --pcap $(VAR)/demo.pcap --truth $(VAR)/demo_truth.csv --before-first-attack --out $(VAR)/model

demo-data: $(VAR)/demo.pcap
model: $(VAR)/model/model.json

run: $(VENV)/.installed $(VAR)/model/model.json
	$(NETAD) run -c $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_JOBS) $(PYTEST_ARGS)

# The quick loop while editing: everything but the tests marked slow (they start netad or
# train a model) or root; a few minutes on 2 cores. CI runs `make test`.
test-fast: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(PYTEST_JOBS) -m "not slow and not root" $(PYTEST_ARGS)

# The property tests (hypothesis) with fresh random examples: `make test` draws the same
# ones every run. Turn a finding (its falsifying example) into an @example on its test.
fuzz: $(VENV)/.installed-test
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest $(PYTEST_JOBS) -m hypothesis $(PYTEST_ARGS)

clean:
	rm -rf $(VAR) .pytest_cache

# ruff, mypy and import-linter, pinned in pyproject's `lint` extra; configured in pyproject.
.PHONY: lint install-lint
$(VENV)/.installed-lint: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[lint]" "$(TORCH)"
	touch $@ $(VENV)/.installed

install-lint: $(VENV)/.installed-lint

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check detector tests
	$(BIN)/mypy
	$(BIN)/lint-imports
