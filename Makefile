# kvm-dirty-harness.  Two commands on a fresh Debian 12 machine: `make run` and `make test`.
# Each installs what it needs (Debian packages, the .venv) first.
VENV    := .venv
PY      := $(VENV)/bin/python
HARNESS := $(VENV)/bin/harness
PYTEST  := $(PY) -m pytest
RESULTS := results

.PHONY: setup setup-build run lint test test-unit test-integration test-on-hardware nightly bench doctor clean

$(VENV)/.installed: pyproject.toml scripts/install-deps.sh
	scripts/install-deps.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

setup-build: setup
	scripts/install-deps.sh --build

## The main job: Debian's prebuilt 6.12 as L1 and L2, scenarios/default.yaml, TCG unless KVM really works.
run: setup
	$(HARNESS) run $(ARGS)

## ruff (harness/, tests/), mypy (strict on the judge, the oracles it runs, the result models; pyproject.toml) and
## the import-layer contract of docs/architecture.md (lint-imports): seconds, so they run before the tests.
lint: setup
	$(VENV)/bin/ruff check harness tests
	$(VENV)/bin/mypy harness
	$(VENV)/bin/lint-imports --no-cache

## Lint, unit tests + integration tests that boot the real nested pipeline under TCG and one real (cached) kernel build.
test: setup-build lint
	HARNESS_KERNEL_BUILD=1 $(PYTEST) tests --junitxml=$(RESULTS)/junit-tests.xml $(PYTEST_ARGS)

test-unit: setup lint
	$(PYTEST) tests/unit $(PYTEST_ARGS)

test-integration: setup-build
	$(PYTEST) tests/integration $(PYTEST_ARGS)

## On a bare-metal x86 box with usable nested KVM: build the hardware matrix's kernels and run it.
test-on-hardware: setup-build
	$(HARNESS) doctor --require-kvm
	$(HARNESS) matrix scenarios/hardware.yaml

## First the micro-guest's proof (every 6.12 and 7.2 mutant and the clean kernels, 10 seeds each: ~25 min with
## two jobs), the race mutants on its concurrent choreography (~10 min), then the Linux L2's mutant matrix
## (kernels x knobs x seeds; JUnit, heat map, mutation score in results/), the ledger-alone time to catch per
## mutant and seed, the 7.2 kernels and mutants, the debug-config axis, then LKDTM's crash reports on the
## 6.12/7.2 debug and 7.2 KASAN kernels (built here if not cached) classified by the console oracle.
nightly: setup-build
	$(HARNESS) matrix scenarios/micro-proof-6.12.yaml --jobs 2; rc=$$?; \
	$(HARNESS) matrix scenarios/micro-proof-7.2.yaml --jobs 2 || rc=$$((rc ? rc : $$?)); \
	$(HARNESS) matrix scenarios/nightly-races.yaml || rc=$$((rc ? rc : $$?)); \
	$(HARNESS) matrix scenarios/nightly.yaml || rc=$$((rc ? rc : $$?)); \
	$(HARNESS) matrix scenarios/catch-time.yaml || rc=$$((rc ? rc : $$?)); \
	$(HARNESS) matrix scenarios/nightly-7.2.yaml || rc=$$((rc ? rc : $$?)); \
	$(HARNESS) matrix scenarios/nightly-debug.yaml || rc=$$((rc ? rc : $$?)); \
	HARNESS_LKDTM=1 $(PYTEST) tests/integration/test_lkdtm.py --junitxml=$(RESULTS)/junit-lkdtm.xml \
		|| rc=$$((rc ? rc : $$?)); exit $$rc

## Performance figures → results/bench-*.json
bench: setup-build
	$(PY) -m harness.fleet.bench --build

doctor: setup
	$(HARNESS) doctor

clean:
	rm -rf $(VENV) .pytest_cache
