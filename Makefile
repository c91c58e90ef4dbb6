# citynode — the two commands of the README: `make demo` and `make test`.
# Everything runs from a project-local virtual environment created on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-quick spec fuzz clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Three city nodes on loopback (SQLite, scratch directory var/demo) and a whole case flow.
demo: $(STAMP)
	$(BIN)/citynode demo

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench docs
	$(BIN)/ruff format --check src tests bench docs

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/protocol src/node

pytest: $(STAMP)
	$(BIN)/pytest

# GnuPG is the attachment baseline; install it from Debian when missing.
gnupg:
	@command -v gpg >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq gnupg)

# Every benchmark, one after the other; writes docs/performance.md (raw JSON in var/bench/).
bench: $(STAMP) gnupg
	$(BIN)/python bench/report.py

# The short version (CI sizes): the page goes to var/bench/, docs/ keeps the full figures.
bench-quick: $(STAMP) gnupg
	$(BIN)/python bench/report.py --quick --out var/bench/performance-quick.md

# The long fuzz run: >= 1,000,000 decoder inputs plus the inbox over HTTP (docs/fuzzing.md).
# Exits non-zero on any unhandled exception or hang; failing inputs go to var/fuzz-crashes/.
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py

# The protocol specification docs/protocol.md is assembled from its chapters in docs/spec/.
spec: $(STAMP)
	$(BIN)/python docs/build_protocol.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
