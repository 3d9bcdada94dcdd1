# sknet-pipeline. `make run`: the sknet-train flow end to end on the embedded default (DATA=cifar10 stages
# the real dataset first). `make test`: the whole suite (what CI runs). `make bench`: the benchmarks.
# `make up` / `make down`: the local Prefect stack with the deployments applied. `make stage SOURCE=… [DEST=…]
# [MAX_CLASS_SKEW=0.2] [ALLOW_SKEW=1]`: stage a dataset through that stack (a new one starts a training run on it).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench up down stage clean

DATA ?= auto
# three pytest workers on two cores, one test module each: a module's servers and fixtures stay in one process,
# and what waits (server start-ups, Prefect's event handling, single-threaded compiles) overlaps with training;
# on 2 cores 3 workers finish the suite in ≈ 3/4 of the time 2 workers take (README: Quick start); the 25 longest
# tests close the report, to keep an eye on the suite's time
PYTEST_ARGS ?= -n 3 --dist loadfile --durations=25
RUN := GLOG_v=3 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# bytecode is compiled after the install on every core (pip compiles the venv's 16,000 modules one by one: 40 of
# the install's 80 s on 2 cores; compileall -j 0: 19 s). Not left to first import: with PYTHONDONTWRITEBYTECODE
# set, every process would compile again what it imports. compileall exits 1 for the few third-party modules
# written for a newer Python (never imported here), which pip skips the same way.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(RUN) -m infra.run_local --data $(DATA) $(RUN_ARGS)

# our own modules' bytecode too, before the suite's hundreds of processes import them (with PYTHONDONTWRITEBYTECODE
# set, each would compile them again: ≈ 0.15 CPU-s a process); compileall rewrites only what changed
# ruff lints the tree first (pyflakes, pycodestyle, isort, bugbear, pyupgrade: pyproject.toml [tool.ruff])
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m compileall -q -j 0 sknet flows tasks infra bench > /dev/null
	$(RUN) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(RUN) -m bench $(BENCH_ARGS)

up: $(STAMP)
	$(RUN) -m infra.stack up

down:
	$(RUN) -m infra.stack down

stage: $(STAMP)
	@test -n "$(SOURCE)" || { echo "make stage: SOURCE=<layout dir, tarball or URL> is required" >&2; exit 2; }
	$(RUN) -m infra.stage --source "$(SOURCE)" $(if $(DEST),--dest "$(DEST)") \
		$(if $(MAX_CLASS_SKEW),--max-class-skew "$(MAX_CLASS_SKEW)") $(if $(ALLOW_SKEW),--allow-skew)

clean:
	rm -rf $(VENV) work bench/results/*.json rewritten_network
