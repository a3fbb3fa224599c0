# dtzoo: `make demo` runs the tiny grid end to end, offline; `make test` runs the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DTZOO := $(BIN)/dtzoo

.PHONY: demo test bench clean-demo chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: that version is a CPU wheel; an open range can pull a multi-GB CUDA build
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

# test extras include interp, atari, minigrid, ray and slurm so those tests run, not skip
$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test,interp,atari,minigrid,ray,slurm]'
	touch $@

# the demo stays offline: the local hub under DTZOO_HOME, and the Hugging Face client told so
demo: export DTZOO_HUB = local
demo: export HF_HUB_OFFLINE = 1
demo: $(VENV)/.installed
	$(DTZOO) data prepare pendulum cartpole
	$(DTZOO) train --grid tiny
	$(DTZOO) eval --grid tiny
	$(DTZOO) publish --grid tiny --hub local
	$(DTZOO) pull pendulum-1L-seed0 --hub local
	$(DTZOO) leaderboard --grid tiny

# lint and format check first (seconds), then the suite
test: $(VENV)/.installed-test chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

# tests/test_report.py opens the HTML report in Debian's chromium (Playwright drives it; its
# own browser download is not used): installed here when missing (CI: root on a fresh machine)
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

bench: $(VENV)/.installed-test
	$(BIN)/python -m benchmarks
