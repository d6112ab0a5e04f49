# Two commands: `make run` and `make test`. Both create .venv and install the project the first time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOPIC  ?= 01-deep-neural-networks/01-dnn
SCALE  ?=
STAMP  := $(VENV)/.installed

.PHONY: setup run test lab papers scoreboard bench lint list clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m common run $(TOPIC) $(if $(SCALE),--scale $(SCALE))

test: $(STAMP)
	$(PY) -m pytest -n auto

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=.

papers: $(STAMP)
	$(PY) -m common papers

scoreboard: $(STAMP)
	$(PY) -m common scoreboard

bench: $(STAMP)
	$(PY) -m common bench

lint: $(STAMP)
	$(VENV)/bin/ruff check .

list: $(STAMP)
	$(PY) -m common list

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
