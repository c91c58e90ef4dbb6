# citynode — the two commands of the README: `make demo` and `make test`.
# Everything runs from a project-local virtual environment created on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck pytest bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/protocol src/node

pytest: $(STAMP)
	$(BIN)/pytest

# GnuPG is the attachment baseline; install it from Debian when missing.
gnupg:
	@command -v gpg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq gnupg)

bench: $(STAMP) gnupg
	$(BIN)/python bench/bench_protocol.py

bench-quick: $(STAMP) gnupg
	$(BIN)/python bench/bench_protocol.py --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
