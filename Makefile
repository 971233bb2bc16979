# amortbench: `make run` (the default suite on embedded data) and `make test` (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CORES  ?= 2
CONFIG ?= config/default.yaml
PROFILE ?= profiles/local
STAMP  := $(VENV)/.installed

.PHONY: setup run run-slurm slurm-up report reproduce test bench profile bundle gpu-smoke lint dry-run clean

setup: $(STAMP)

# The environment: created if missing, refreshed when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# The config is validated first: a YAML error then names its line and column (Snakemake's own message does not).
run: setup
	$(BIN)/python -m benchmarks.cli validate $(CONFIG)
	$(BIN)/snakemake --profile $(PROFILE) --cores $(CORES) --configfile $(CONFIG)
	@echo "leaderboard: results/leaderboard.md   page: results/index.html   cost: results/costs.md"

# On a SLURM cluster (edit profiles/slurm first: account, partition; see docs/cluster.md)
run-slurm: setup
	$(BIN)/python -m benchmarks.cli validate $(CONFIG)
	$(BIN)/snakemake --profile profiles/slurm --configfile $(CONFIG)

# A one-node SLURM cluster on this machine (Debian's slurm-wlm and munge; root), for tests and trials
slurm-up:
	tests/cluster/start_slurm.sh

# Snakemake's self-contained report bundle (after `make run`): leaderboards, plots, figures, curves.
report: setup
	$(BIN)/snakemake --profile $(PROFILE) --configfile $(CONFIG) --report results/report.html
	@echo "report: results/report.html   (also results/index.html)"

# Regenerate a committed reference leaderboard (default: full Fashion-MNIST on CPU, about an hour on
# 2 cores) in build/<name>/ and copy its reports to results/reference/<name>/ with RUN.md.
REFERENCE ?= config/fashion_cpu.yaml
REF_NAME := $(basename $(notdir $(REFERENCE)))
reproduce: setup
	@start=$$(date +%s); \
	$(BIN)/snakemake --profile $(PROFILE) --cores $(CORES) --configfile $(REFERENCE) --directory build/$(REF_NAME) && \
	$(BIN)/python -m benchmarks.cli publish build/$(REF_NAME)/results results/reference/$(REF_NAME) \
	  --config $(REFERENCE) --cores $(CORES) --seconds $$(( $$(date +%s) - start )) --command "make reproduce REFERENCE=$(REFERENCE)"

test: setup
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python -m pytest tests/perf --benchmark-enable --benchmark-columns=min,median,mean,rounds

# Where the time of the last run went: the per-stage cost table (results/costs.md, written by every report)
profile:
	@test -f results/costs.md || { echo "no results/costs.md: run the pipeline first (make run)"; exit 1; }
	@cat results/costs.md

# The last run's results as one archive that travels (BUNDLE=...; MODELS=1 adds the trained models)
BUNDLE ?= results/bundle.tar.gz
bundle: setup
	$(BIN)/python -m benchmarks.cli bundle --manifest results/expected.json --out $(BUNDLE) $(if $(MODELS),--models,)

# Every method on every model family at tiny scale on the GPU, checked against the CPU (2 min on a 2-core CPU)
gpu-smoke: setup
	$(BIN)/python -m benchmarks.smoke --device cuda --out results/gpu_smoke.json

lint: setup
	$(BIN)/snakemake --lint --configfile $(CONFIG)

dry-run: setup
	$(BIN)/snakemake --profile $(PROFILE) --cores $(CORES) --configfile $(CONFIG) -n

clean:
	rm -rf results/*/ results/leaderboard.* results/metrics_long.* results/pareto_*.png results/report.log .snakemake
