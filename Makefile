# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv when missing and (re)install the project only when pyproject.toml changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/cyclegan demo

# The import contracts (pyproject.toml [tool.importlinter]) first: a broken one fails the run in a second.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

# The pure, fast tests (tests/unit): the development loop. `make test` (all of tests/) is what CI runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check cyclegan_core pipelines tests benchmarks
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) mlruns.db mlartifacts demo-output .pytest_cache
