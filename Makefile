# Entry points for people who type make. The commands themselves live in
# bench/ and scripts/; see bench/README.md and docs/performance.md.

PYTHON ?= python3

.PHONY: bench bench-quick bench-publish

# The full benchmark suite (P1-P8, 3 repetitions; about 20 minutes).
bench:
	$(PYTHON) -m bench run

# One repetition with short windows (about 5 minutes): a smoke run.
bench-quick:
	$(PYTHON) -m bench run --quick

# Copy the latest bench/results/report.md and plots into docs/.
bench-publish:
	$(PYTHON) -m bench publish
