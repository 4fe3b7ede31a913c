# `make demo` and `make test` each set everything up on a fresh machine: .venv, the package, FFmpeg.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,demo]"
	touch $(STAMP)

# FFmpeg's shared libraries serve audio decoding (datasets.Audio / torchcodec); best effort without root.
system-deps:
	@if ! ldconfig -p 2>/dev/null | grep -q libavcodec; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
	      || echo "warning: could not install ffmpeg (audio decoding will be unavailable)"; \
	  else echo "note: ffmpeg not found; install it for audio (apt-get install ffmpeg)"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/hftl demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check hftl tests recipes benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_vision.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
