# textserve — the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast proto lint bench loadtest clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned to the CPU wheel first so nothing pulls a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install textserve with its dev tools

run: install ## start every service on localhost with embedded defaults
	$(VENV)/bin/textserve serve all

# Shuffled order (pytest-randomly; the seed is printed: rerun one with SEED=<n>), skip reasons
# listed (-rs); under CI=true a skip for a missing dependency fails the run (tests/conftest.py).
PYTEST_ARGS := -q -p no:cacheprovider -p randomly -rs $(if $(SEED),--randomly-seed=$(SEED))

test: install ## the whole test suite, in a shuffled order (SEED=<n> repeats one)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## unit tests only
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

.PHONY: mutation
MUTATION_DIR := build/mutation
mutation: install ## mutmut over the contract's core modules ([tool.mutmut]; MUTANTS='textserve.core.vectors.*' narrows); slow (~35 min on 2 shared cores), not in CI
	rm -rf $(MUTATION_DIR) && mkdir -p $(MUTATION_DIR)/src
	cp -r services/textserve $(MUTATION_DIR)/src/
	cp -r tests docs protos deploy pyproject.toml $(MUTATION_DIR)/
	cd $(MUTATION_DIR) && env -u PYTHONPATH $(abspath $(VENV))/bin/mutmut run $(MUTANTS); \
	  env -u PYTHONPATH $(abspath $(VENV))/bin/mutmut results --all true > results.txt; \
	  echo "mutants per module (build/mutation/results.txt; why each survivor stays: docs/notes/mutation-report.md):"; \
	  $(abspath $(PY)) $(abspath tests/mutation_summary.py) results.txt

proto: install ## regenerate Python stubs from protos/
	$(PY) -m textserve.protogen

.PHONY: openapi
openapi: install ## rewrite docs/openapi.json from the gateway app (tests fail when it is stale)
	$(PY) -m textserve.gateway.openapi_dump

lint: install ## ruff + mypy + the architecture's import contracts (docs/architecture.md)
	$(VENV)/bin/ruff check services tests loadtests
	$(VENV)/bin/ruff format --check services tests loadtests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: install ## every benchmark -> bench-report/report.md + PNG plots of latency against throughput (~13 min)
	$(PY) -m loadtests.report --out bench-report --skip tasks

.PHONY: bench-embedding
bench-embedding: install ## embedding: raw model vs service (batching on/off), client package and a bare grpc.aio floor server at concurrency 1-64, short and medium texts
	$(PY) -m loadtests.bench_embedding

loadtest: install ## Locust, headless, against `textserve serve all` on loopback (60 s; SOAK=1: 10-min soak + memory check)
	$(PY) -m loadtests.run_locust $(if $(filter 1 true yes,$(SOAK)),--soak)

.PHONY: deploy-check
deploy-check: install ## dashboards/rules copies fresh, chart tests, promtool checks
	$(PY) deploy/build_assets.py --check
	$(PY) -m pytest -q -p no:cacheprovider tests/chart tests/deploy
	promtool check rules deploy/prometheus/textserve.rules.yaml
	promtool test rules deploy/prometheus/tests/textserve.rules.test.yaml

.PHONY: bench-precision
bench-precision: install ## fp32 vs INT8 embedding: raw best batch, service at concurrency 1/32/64, short and medium texts (~4 min)
	$(PY) -m loadtests.bench_precision

.PHONY: bench-cache
bench-cache: install ## response-cache benchmark: hit vs miss latency, 90% hits vs no cache (own redis-server)
	$(PY) -m loadtests.bench_cache

.PHONY: demo-lm
demo-lm: install ## retrain the packaged demo LM from ../shared/data/corpus (textserve train-demo-lm; CPU, minutes)
	$(VENV)/bin/textserve train-demo-lm --overwrite

.PHONY: bench-generation
bench-generation: install ## 1/8/32 streams vs generate() (engine process and engine thread), prefix-hit TTFT, burst ITL p99/p50; interleaved rounds (~7 min)
	$(PY) -m loadtests.bench_generation --compare-thread

.PHONY: bench-structured
bench-structured: install ## structured output: JSON-Schema-constrained vs unconstrained tokens/s at 8 streams (interleaved rounds, medians; ~2 min)
	$(PY) -m loadtests.bench_structured

.PHONY: bench-classifier
bench-classifier: install ## classifier: in-process vs shared model vs embedding service over gRPC, concurrency 1 and 32
	$(PY) -m loadtests.bench_classifier

.PHONY: bench-drift
bench-drift: install ## CPU cost of each drift detector on a 200 x 384 window (quality/)
	$(PY) -m loadtests.bench_drift

.PHONY: bench-quality
bench-quality: install ## classifier and embedding p50 latency / throughput with drift detectors off vs on (4 interleaved rounds, concurrency 1 and 32) + detector CPU (~5 min)
	$(PY) -m loadtests.bench_quality

.PHONY: bench-tasks
bench-tasks: install ## fine-tune on SST-2, SST-3 and CoNLL-2003 (../shared/data): dev accuracy / macro-recall / entity F1, training time, then each model served vs its raw forward (~1.5 h on 2 cores)
	$(PY) -m loadtests.bench_tasks

.PHONY: bench-task-serving
bench-task-serving: install ## served sequence classifier and NER model vs raw forward, one short text per call (~3 min; MiniLM stand-ins unless given)
	$(PY) -m loadtests.bench_task_serving
.PHONY: bench-lifecycle
bench-lifecycle: install ## primary Embed p50 with a shadow version at 100% vs none (4 interleaved rounds, concurrency 1 and 8; ~2 min)
	$(PY) -m loadtests.bench_lifecycle

.PHONY: bench-tuning
bench-tuning: install ## tuned batch budget vs fixed max_batch_size on a mixed-length workload (~5 min)
	$(PY) -m loadtests.bench_tuning

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
