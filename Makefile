# Two commands do all the set-up on a fresh clone:
#   make demo   creates .venv, trains on the bundled corpus for about a minute, prints a sample
#   make test   creates .venv and runs the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-all lint browser bench bench-scale bench-mpi bench-quality bench-serve docs-tables clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/charrnn train data/shakespeare.txt --config configs/demo.yaml
	$(BIN)/charrnn sample --seed "FALSTAFF." --length 500 --temperature 0.8

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/pytest -q

# Chromium, for the test that runs `charrnn show`'s page in a real browser (skipped without
# it): Debian's package, installed with apt-get (as root) only when it is missing
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; } \
		|| echo "chromium could not be installed: the browser test of charrnn show will be skipped"
	@chromium --version 2>/dev/null || true

lint: $(STAMP)
	$(BIN)/ruff check charrnn tests benchmarks
	$(BIN)/ruff format --check charrnn tests benchmarks

# the PyTorch reference is optional: without torch the table has no ratios. torch is installed
# on its own (not '.[bench]', which would replace the editable install of `make setup`)
bench: $(STAMP)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0 \
		|| echo "torch==2.13.0 could not be installed: the table will have no ratios"
	$(BIN)/python benchmarks/bench_speed.py $(BENCH_ARGS)

bench-scale: $(STAMP)
	$(BIN)/python benchmarks/bench_scale.py

# data-parallel training over MPI: compute and Allreduce time of a step for 1 and 2 ranks, the
# Allreduce of each model size, and the expected speedup on 2 to 64 nodes (docs/scaling-out.md)
bench-mpi: $(STAMP)
	$(BIN)/python benchmarks/bench_mpi.py $(MPI_ARGS)

# charrnn serve under 1, 8 and 64 concurrent streaming clients, and its memory over 10,000
# requests (docs/performance.md); SERVE_ARGS=--quick for a smoke run
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/bench_serve.py $(SERVE_ARGS)

# how well a model starts from a zero state: make bench-quality CHECKPOINT=runs/x/best.npz
bench-quality: $(STAMP)
	@test -n "$(CHECKPOINT)" || { echo "usage: make bench-quality CHECKPOINT=runs/x/best.npz"; exit 2; }
	$(BIN)/python benchmarks/bench_quality.py $(CHECKPOINT) $(QUALITY_ARGS)

# the measured tables of docs/*.md, rewritten from the results files they name
# (benchmarks/results/<name>-<date>.json, written by the benchmarks above)
docs-tables: $(STAMP)
	$(BIN)/python benchmarks/tables.py

clean:
	rm -rf $(VENV) runs .pytest_cache
