# Tamiyo telemetry. `make train` in one terminal, `make tui` in another; `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before the package so its range (torch>=2.3) then installs nothing more.
# On a CPU-only machine with the local CPU wheel this is fast; on a GPU box the same pin pulls
# the CUDA build from the index. Override, e.g.: make install TORCH="torch==2.14.1"
TORCH ?= torch==2.13.0
ENDPOINT ?= $(or $(TAMIYO_ENDPOINT),tcp://127.0.0.1:5555)
ARGS ?=
OUT ?= runs
WEB ?= 127.0.0.1:8000
EXPORT ?= 127.0.0.1:9464
# NPROC=2 (or more): train under torchrun, one DDP rank per process, each publishing to `make bus`.
NPROC ?= 1
RUN ?=
SPEED ?= 1
# make bus: where the ranks' publishers connect (the producer's --connect default).
FRONTEND ?= tcp://127.0.0.1:5556

.DEFAULT_GOAL := help
.PHONY: help install _install train bus tui web export archive alerts replay bench gpu-check test lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'
	@echo "  Variables: ARGS=\"...\" (flags for train/bus/tui/web/export/archive/alerts/replay),"
	@echo "             ENDPOINT=$(ENDPOINT), WEB=$(WEB), EXPORT=$(EXPORT), OUT=$(OUT), TORCH=$(TORCH)"
	@echo "             NPROC=$(NPROC) (train: NPROC>1 runs torchrun, its ranks publish through make bus)"
	@echo "             FRONTEND=$(FRONTEND) (bus: where ranks connect; consumers use ENDPOINT)"
	@echo "             RUN=runs/<run_id> (replay, tui), SPEED=$(SPEED) (replay: times the recorded pace, or max)"

# `make bus`, `make train` and `make tui` started together in three terminals each find the install
# missing: one installs under the lock, the others wait for it and then find it done.
$(VENV)/.installed: pyproject.toml
	@flock $(VENV).lock $(MAKE) --no-print-directory _install

_install:
	@if [ -f $(VENV)/.installed ] && [ $(VENV)/.installed -nt pyproject.toml ]; then exit 0; fi; \
	set -e; \
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11+ is needed (got $$($(BIN)/python -V)); set PYTHON=python3.11"; exit 1; }; \
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH)"; \
	echo '$(BIN)/pip install --quiet -e ".[dev,web,prometheus]"'; \
	$(BIN)/pip install --quiet -e ".[dev,web,prometheus]"; \
	touch $(VENV)/.installed

install: $(VENV)/.installed ## Create .venv and install everything (done by the other targets on first use)

train: $(VENV)/.installed ## Train Tamiyo and publish telemetry on ENDPOINT (flags: ARGS="--updates 500 ...")
ifeq ($(filter-out 1,$(NPROC)),)
	$(BIN)/python -m producer --endpoint $(ENDPOINT) $(ARGS)
else
	$(BIN)/torchrun --standalone --nproc-per-node $(NPROC) -m producer $(ARGS)
endif

bus: $(VENV)/.installed ## The forwarder: ranks connect on FRONTEND, consumers on ENDPOINT (flags: ARGS="--upstream ...")
	$(BIN)/python -m bus.forwarder --frontend $(FRONTEND) --backend $(ENDPOINT) $(ARGS)

tui: $(VENV)/.installed ## Watch a run: the live dashboard (ENDPOINT=tcp://host:port), or browse RUN=runs/<id>
	$(BIN)/python -m consumers.tui $(if $(RUN),--run $(RUN),--endpoint $(ENDPOINT)) $(ARGS)

web: $(VENV)/.installed ## The dashboard in a browser at http://WEB (default 127.0.0.1:8000); one per tab
	$(BIN)/python -m consumers.web --endpoint $(ENDPOINT) --address $(WEB) $(ARGS)

export: $(VENV)/.installed ## Prometheus exporter: every metric per run and rank at http://EXPORT/metrics
	$(BIN)/python -m consumers.exporter --endpoint $(ENDPOINT) --address $(EXPORT) $(ARGS)

archive: $(VENV)/.installed ## Record a run to CSV under OUT (default runs/)
	$(BIN)/python -m consumers.archiver --endpoint $(ENDPOINT) --out $(OUT) $(ARGS)

alerts: $(VENV)/.installed ## Watch a run for trouble and print alerts
	$(BIN)/python -m consumers.alerts --endpoint $(ENDPOINT) $(ARGS)

replay: $(VENV)/.installed ## Republish an archived run: RUN=runs/<run_id> [SPEED=10|max]
	@test -n "$(RUN)" || { echo "usage: make replay RUN=runs/<run_id> [SPEED=10|max]"; exit 2; }
	$(BIN)/python -m consumers.replay $(RUN) --speed $(SPEED) --endpoint $(ENDPOINT) $(ARGS)

bench: $(VENV)/.installed ## Benchmarks: ratios against references in one run; writes bench/results.json
	$(BIN)/python -m bench $(ARGS)

gpu-check: $(VENV)/.installed ## On a CUDA machine: compiled training, cuda_* fields and fragmentation checked
	$(BIN)/python -m bench.gpu_check

test: $(VENV)/.installed ## Run the test suite
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(VENV)/.installed ## ruff
	$(BIN)/ruff check .

clean: ## Remove the virtualenv and caches (keeps runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
