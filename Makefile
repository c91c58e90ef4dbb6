# citynode — the two commands of the README: `make demo` and `make test`.
# Everything runs from a project-local virtual environment created on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-quick load spec fuzz chaos security no-leak clean

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

# The full load run (bench/notes/load.md): three nodes, 10 case workers per node through the case
# API for 60 s plus a 10,000-message federation stream; peak RSS per node, requests/s, latency,
# 503 + Retry-After under overload, nothing accepted lost. CI runs tests/e2e/test_e2e_load.py.
load: $(STAMP)
	$(BIN)/python bench/bench_load.py

# The long fuzz run: >= 1,000,000 decoder inputs plus the inbox over HTTP (docs/fuzzing.md).
# Exits non-zero on any unhandled exception or hang; failing inputs go to var/fuzz-crashes/.
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz/run.py

# The full fault run (docs/chaos.md): kill -9 in 10 rounds of 5,000 messages, partitions in
# network namespaces, a PostgreSQL cluster stopped and started, a full disk. Needs root.
# CI runs the same tests bounded (1 round, 400 messages); CITYNODE_CHAOS_SEED repeats a run.
# Outages last CHAOS_HOLD_S (past the sender's 30 s request timeout, so batches in flight are
# given up on and sent again).
CHAOS_ROUNDS   ?= 10
CHAOS_MESSAGES ?= 5000
CHAOS_HOLD_S   ?= 35
chaos: $(STAMP)
	CITYNODE_CHAOS_ROUNDS=$(CHAOS_ROUNDS) CITYNODE_CHAOS_MESSAGES=$(CHAOS_MESSAGES) \
		CITYNODE_CHAOS_HOLD_S=$(CHAOS_HOLD_S) $(BIN)/pytest tests/chaos -s --durations=0

# The attack table: every named attack with the code it must get; rewrites docs/security-tests.md.
security: $(STAMP)
	$(BIN)/python tests/security/make_table.py

# The no-leak check: the demo's year of cases on SQLite and PostgreSQL (CITYNODE_TEST_PG_URL),
# then every file, database dump, metrics page and error body scanned for the demo's people.
no-leak: $(STAMP)
	$(BIN)/pytest tests/e2e/test_e2e_no_leak.py -v

# The protocol specification docs/protocol.md is assembled from its chapters in docs/spec/.
spec: $(STAMP)
	$(BIN)/python docs/build_protocol.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
