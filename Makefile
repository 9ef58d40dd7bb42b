# profilestream developer commands. `make` (or `make help`) lists them.

VENV ?= .venv
PYTHON ?= python3
PIP_CACHE_DIR ?= $(HOME)/.cache/profilestream/pip
export PIP_CACHE_DIR

ARGS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv run demo test bench bench-e2e profile lint format sample pubsub-up pubsub-down prism flink-up flink-down clean distclean

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-14s %s\n", $$1, $$2}'

venv: $(VENV)/.installed ## Create the virtualenv with the package and test tools (reinstalls only when setup.py changes)

$(VENV)/.installed: setup.py tools/pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]' -e tools
	touch $@

run: venv ## Replay the sample stream into ./data/ (append flags with ARGS='...')
	$(VENV)/bin/profilestream run --source replay:pipelines/samples/stream.jsonl $(ARGS)

demo: venv ## A shop page sending XDM beacons through the web SDK, the pipeline and the console (Ctrl-C stops it)
	$(VENV)/bin/python -m tools.demo $(ARGS)

lint: venv ## Check lint and formatting with ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint ## Lint, then run the tests on 2 workers (extra pytest flags with PYTEST_ARGS='...')
	FAKE_GCS_SERVER=$(FAKE_GCS) $(VENV)/bin/pytest -n 2 -q -rs $(PYTEST_ARGS)

bench: venv ## Run the throughput benchmark
	$(VENV)/bin/python -m tools.bench_commands
	$(VENV)/bin/python -m tools.bench
	$(VENV)/bin/python -m tools.bench_identity
	$(VENV)/bin/python -m tools.bench_profiles
	$(VENV)/bin/python -m tools.bench_privacy

RATE ?= 500
RUNNER_ARGS ?=
profile: venv ## Flame graphs (py-spy) of the reference loop and the --batch pipeline in data/profile/, top frames printed
	$(VENV)/bin/python -m tools.profile

bench-e2e: venv ## Measure POST -> profile and lake latency at RATE events/s (default 500); RUNNER_ARGS='--runner ...'
	RATE=$(RATE) RUNNER_ARGS='$(RUNNER_ARGS)' $(VENV)/bin/python -m tools.bench_e2e

format: venv ## Format the code and apply ruff's safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

sample: venv ## Regenerate pipelines/samples/stream.jsonl
	$(VENV)/bin/python -m tools.sample_stream --out pipelines/samples/stream.jsonl

.PHONY: flex-template
flex-template: venv ## Build the Dataflow Flex Template metadata (deploy/dataflow/metadata.json)
	$(VENV)/bin/python -m pipelines.flex_template --out deploy/dataflow/metadata.json

pubsub-up: venv ## Start Google's Pub/Sub emulator on 127.0.0.1:8085 with the topics (then export what it prints)
	$(VENV)/bin/python -m tools.pubsub_emulator up

pubsub-down: ## Stop the Pub/Sub emulator that pubsub-up started
	test ! -x $(VENV)/bin/python || $(VENV)/bin/python -m tools.pubsub_emulator down

# Prism, Beam's Go local runner, built from the Go module proxy for the pinned Beam version, because Beam would
# otherwise download it from GitHub at run time. Pass it to a run with --prism_location $(PRISM).
BEAM_VERSION ?= $(shell sed -n "s/.*apache-beam\[[^]]*\]==\([0-9.]*\).*/\1/p" setup.py | head -1)
PRISM_DIR ?= $(HOME)/.cache/profilestream/prism/v$(BEAM_VERSION)
PRISM := $(PRISM_DIR)/prism

prism: $(PRISM) ## Build Beam's Prism runner binary for the pinned Beam version (needs Go; skipped once built)

$(PRISM):
	mkdir -p $(PRISM_DIR)
	GOBIN=$(PRISM_DIR) GOFLAGS=-mod=mod go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)

# A local Flink session cluster for --runner FlinkRunner: a JobManager (REST on localhost:8081) and a TaskManager
# with 2 slots, run from the Flink jars in PyPI's apache-flink-libraries, plus Beam's Python worker pool on
# localhost:50000 (--environment_type=EXTERNAL). flink-up also fetches Beam's Flink job-server jar with Maven.
# Pid files, logs and checkpoints: ~/.cache/profilestream/flink/<version>/run.
flink-up: venv ## Start the local Flink session cluster and Beam worker pool (other ports with ARGS='--rest-port N ...')
	$(VENV)/bin/python -m tools.flink_cluster up $(ARGS)

flink-down: ## Stop the Flink cluster and worker pool that flink-up started
	test ! -x $(VENV)/bin/python || $(VENV)/bin/python -m tools.flink_cluster down

# fake-gcs-server, an open-source Cloud Storage emulator, built from the Go module proxy: the tests write a gs:// lake
# to it (the Google Cloud CLI ships no Cloud Storage emulator).
FAKE_GCS_VERSION ?= 1.56.1
FAKE_GCS_DIR ?= $(HOME)/.cache/profilestream/fake-gcs-server/v$(FAKE_GCS_VERSION)
FAKE_GCS := $(FAKE_GCS_DIR)/fake-gcs-server

.PHONY: gcs-emulator
gcs-emulator: $(FAKE_GCS) ## Build fake-gcs-server, the Cloud Storage emulator the gs:// lake tests use (needs Go)

$(FAKE_GCS):
	mkdir -p $(FAKE_GCS_DIR)
	GOBIN=$(FAKE_GCS_DIR) GOFLAGS=-mod=mod go install github.com/fsouza/fake-gcs-server@v$(FAKE_GCS_VERSION)

clean: ## Remove data/ and build artefacts (keeps the venv)
	rm -rf data build dist *.egg-info .pytest_cache .ruff_cache
	find pipelines transforms schemas tests -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## Also remove the venv
	rm -rf $(VENV)
