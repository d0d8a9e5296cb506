# relmon: `make demo` runs everything locally; `make test` runs every check and test.
# Both set up .venv (scripts/bootstrap.sh) and build the model if it is missing.
VENV := .venv
BIN := $(VENV)/bin
MODEL := models/relmon-minilm-ce/card.json

.PHONY: demo test test-fast lint bootstrap model bench clean

bootstrap:
	bash scripts/bootstrap.sh

$(MODEL): | bootstrap
	$(BIN)/relmon model build

model: bootstrap $(MODEL)

demo: bootstrap $(MODEL)
	$(BIN)/relmon demo $(ARGS)

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Lint and every test; a missing model is built beside lint and the unit tier (scripts/test.sh).
test: bootstrap
	bash scripts/test.sh $(ARGS)

# The unit tier only, without the slow tests (no servers, no model build).
test-fast: lint
	$(BIN)/python -m pytest -ra tests/unit -m "not slow" $(ARGS)

clean:
	rm -rf .relmon
