# The README's two commands: `make run` and `make test`. Everything else is plumbing for them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# No model hub on these machines, nor in CI: models come from local dirs or `builtin:minilm`.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1

ARTIFACTS ?= artifacts
# make run: small enough to finish in a few minutes on 2 cores, big enough that fine-tuning
# measurably beats the base on the held-out shopper queries searched against the whole catalog
# (5,000 listings -> 500 train triplets); train publishes only if it does (else exit 3).
LISTINGS  ?= 5000
EPOCHS    ?= 1

.PHONY: install run test test-fast lint format docs gpu-check bench clean

install: $(VENV)/.installed

# torch first, pinned: the CPU build lies on these machines' disk; an unpinned torch pulled
# by a dependency would be a multi-GB CUDA build. constraints.txt pins what CI tested.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

run: install
	$(BIN)/fashion-batch sample-data --output $(ARTIFACTS)/sample --listings $(LISTINGS) --seed 0
	rm -rf $(ARTIFACTS)/model $(ARTIFACTS)/ray_results
	$(BIN)/fashion-batch train --triplets $(ARTIFACTS)/sample/triplets/train.parquet \
		--eval-queries $(ARTIFACTS)/sample/queries.jsonl --eval-catalog $(ARTIFACTS)/sample/catalog \
		--output $(ARTIFACTS)/model --base-model builtin:minilm --num-workers 2 --epochs $(EPOCHS) \
		--max-seq-length 128
	$(BIN)/fashion-batch embed --input $(ARTIFACTS)/sample/catalog --output $(ARTIFACTS)/embeddings \
		--model $(ARTIFACTS)/model --probe-queries $(ARTIFACTS)/sample/queries.jsonl --overwrite
	@echo "model:      $(ARTIFACTS)/model  (metrics: $(ARTIFACTS)/model/training_metrics.json)"
	@echo "embeddings: $(ARTIFACTS)/embeddings  (manifest: $(ARTIFACTS)/embeddings/manifest.json)"

# docs/cli.md is generated from the config dataclasses; tests/test_docs.py fails when it is stale.
docs: install
	$(BIN)/python -m fashion_batch.cli_docs > docs/cli.md

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest -m "not gpu" --durations=15 tests

# Every test that needs no Ray cluster (tests/conftest.py marks the others `ray`).
test-fast: install
	$(BIN)/python -m pytest -m "not gpu and not ray" --durations=10 tests

# For a lent GPU machine: the gpu-marked tests, then the side-by-side benchmark at a small N
# (plain/pool/job on the GPU in fp16), all into one file; fails if either part failed.
GPU_BENCH_LISTINGS ?= 4000
gpu-check: install
	mkdir -p $(ARTIFACTS)
	status=0; \
	$(BIN)/python -m pytest -m gpu tests -v > $(ARTIFACTS)/gpu-check.txt 2>&1 || status=1; \
	$(BIN)/python benchmarks/embed_throughput.py --listings $(GPU_BENCH_LISTINGS) --repeats 1 \
		--fast-flags "--batch-size 512" --workdir $(ARTIFACTS)/gpu-bench \
		--json-out $(ARTIFACTS)/gpu-bench.json >> $(ARTIFACTS)/gpu-check.txt 2>&1 || status=1; \
	cat $(ARTIFACTS)/gpu-check.txt; exit $$status

# The CPU side-by-side benchmark (docs/performance.md): every peer and the job on short, long
# and mixed catalogs of BENCH_LISTINGS rows, for each of BENCH_MODELS (minilm, seed = the seed's
# size with random weights), one table of ratios to `plain` from one run.
BENCH_LISTINGS ?= 2000
BENCH_MODELS   ?= minilm,seed
BENCH_REPEATS  ?= 1
bench: install
	mkdir -p $(ARTIFACTS)
	$(BIN)/python benchmarks/embed_throughput.py --listings $(BENCH_LISTINGS) \
		--models $(BENCH_MODELS) --repeats $(BENCH_REPEATS) \
		--workdir $(ARTIFACTS)/bench --json-out $(ARTIFACTS)/bench.json

clean:
	rm -rf $(ARTIFACTS) .pytest_cache .ruff_cache
