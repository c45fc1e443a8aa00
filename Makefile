# Two entry points: `make demo` (set up what the demo needs, then compile the real MiniLM and
# print the report) and `make test` (set up what the tests need, then run the test suite).
# scripts/setup_machine.py decides per component and installs only what is missing.
PYTHON ?= python3
BIN := .venv/bin

.PHONY: demo test test-long

demo:
	$(PYTHON) scripts/setup_machine.py demo
	$(BIN)/sparc demo --out sparc-demo

test:
	$(PYTHON) scripts/setup_machine.py test
	$(BIN)/python -m pytest -q

test-long:
	$(PYTHON) scripts/setup_machine.py test
	$(BIN)/python -m pytest -q -m long
