# netad: `make run` (demo end to end) and `make test` (the whole suite).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
NETAD  := $(BIN)/netad
CONFIG ?= configs/default.yaml
VAR    ?= var

.PHONY: run test install install-test demo-data model clean

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VAR) .pytest_cache
