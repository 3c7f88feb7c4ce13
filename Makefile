# Two commands for a fresh machine: `make pipeline` and `make test` (README quickstart).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch pinned for these machines; GPU users override, e.g. `make pipeline TORCH_SPEC=torch==2.13.0`
# with their own index configured in pip.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

# Offline and quiet: every tool's telemetry switch (STACK-NOTES 5), one thread per test process (STACK-NOTES 9).
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site_cache
# Label Studio lives in its own virtualenv (beside the project it forces prefect down); the Label Studio tests
# create it on first use and reuse it across clones from here.
export RLHF_LABEL_STUDIO_VENV ?= $(HOME)/.cache/rlhf-pipeline/label-studio-1.23.2

.PHONY: venv data pipeline example-chat test test-fast report schedule bench seeds label-studio-venv clean
venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# The demo's raw data, generated deterministically (same bytes, same DVC hash as data.dvc on any machine), then
# committed to the DVC cache (data.dvc unchanged), so `dvc status` is clean and `dvc checkout` can restore it.
data: venv
	$(VENV)/bin/rlhf demo-data data --skip-if-current
	$(VENV)/bin/dvc commit -q -f data.dvc

pipeline: data
	$(VENV)/bin/rlhf run

# Your own chat model and data (examples/chat/README.md): writes a tiny chat model and Parquet data where none are
# (yours are kept), then runs that folder's pipeline: prepare, sft, preferences, reward, ppo, evaluate, promotion.
example-chat: venv
	cd examples/chat && ../../$(PY) -m rlhf.demo.chat_example . && ../../$(VENV)/bin/rlhf run

test: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

report: venv
	$(VENV)/bin/rlhf report

# Ours vs TRL side by side (needs benchmarks/.venv-trl and .venv-trl112: see BENCHMARKS.md).
bench: venv
	$(PY) benchmarks/bench.py

# Seed sweep (BENCHMARKS.md "Seed sweep"): reward, ppo and evaluate for seeds 0-4 on the outputs of `make pipeline`
# (run that first), each seed under artifacts/seeds/; fails when a seed misses a demo target. More options through
# SEEDS_ARGS, e.g. `make seeds SEEDS_ARGS="--jobs 2 --set ppo.kl_coef=0.1"`.
SEEDS ?= 0-4
SEEDS_ARGS ?=
seeds: venv
	$(PY) benchmarks/seeds.py --seeds $(SEEDS) $(SEEDS_ARGS)

schedule: venv
	$(VENV)/bin/rlhf schedule --cron "0 3 * * *"

label-studio-venv:
	test -x $(RLHF_LABEL_STUDIO_VENV)/bin/label-studio || (python3 -m venv $(RLHF_LABEL_STUDIO_VENV) && \
	  $(RLHF_LABEL_STUDIO_VENV)/bin/pip install -q label-studio==1.23.2)

clean:
	rm -rf artifacts metrics plots reports mlflow.db mlartifacts .prefect
