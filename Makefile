# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv and install
# everything they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FEDSEG := $(VENV)/bin/fedseg
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-repeat jobs bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all]'
	touch $(STAMP)

## demo: synthesize spleen phantoms, split them over 2 sites and train FedAvg in the NVFlare simulator
demo: $(STAMP)
	$(FEDSEG) simulate --task spleen --sites 2

## test: the whole suite, end-to-end runs (simulator, Ray, POC) included, one file per worker on TEST_WORKERS workers
## (an end-to-end run keeps a core busy only about half the time: two in parallel fill a 2-core machine)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -m "slow or not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

## test-fast: the default suite only (a few minutes on CPU)
test-fast: $(STAMP)
	$(PY) -m pytest

## test-repeat: the stochastic tests (or TESTS/SELECT) K times, one seed each; prints every test's pass rate
K ?= 5
TESTS ?= tests
SELECT ?=
test-repeat: $(STAMP)
	$(PY) tests/repeat.py --runs $(K) $(if $(SELECT),-k "$(SELECT)") $(TESTS)

## jobs: regenerate the committed NVFlare job folders
jobs: $(STAMP)
	$(FEDSEG) jobs export --out jobs

## bench: quick mode (tiny spleen on CPU): training vs MONAI's tutorial loop, inference vs plain MONAI, aggregation,
## NVFlare's per-round cost; table and acceptance goals on stdout, JSON (with the CPU flags) in runs/bench.json
bench: $(STAMP)
	$(PY) -m bench --quick --out runs/bench.json

## bench-full: for a GPU (under 10 minutes): throughput, time to a phantom Dice bar with MONAI's fast-training levers
## (cache and crops on the device, ThreadDataLoader, AMP) and inference, at the card's size
bench-full: $(STAMP)
	$(PY) -m bench --full --out runs/bench_full.json

clean:
	rm -rf $(VENV) runs data .pytest_cache
