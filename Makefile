# Two entry points for newcomers: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv with the system python3 and install rtfb into it on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,display,offline]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/rtfb run protocols/insula_alff_downregulation.toml --simulate --speed 40 --out sessions
	$(BIN)/rtfb report "$$(ls -d sessions/sub-* | tail -n 1)"

test: $(BIN)/.installed
	$(BIN)/ruff check rtfb simulator tests
	$(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(BIN)/python -m rtfb.bench metrics

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
