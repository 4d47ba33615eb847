# sdt-ray: `make demo` and `make test` set up a fresh clone on their own.
PYTHON      ?= python3
VENV        ?= .venv
# CPU machines take the torch wheel that ships on disk; GPU users override, e.g.
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEB_PACKAGES ?=
# `make test` only: the `--cluster` test brings a launcher cluster up over SSH to this machine,
# the call tests speak with espeak-ng, and the report test renders its page in headless Chromium.
TEST_DEB_PACKAGES ?= openssh-server rsync espeak-ng chromium
PYTEST_ARGS ?=
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: setup debs test test-fast demo demo-model bench meld-text clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory debs PACKAGES="$(DEB_PACKAGES)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

# Debian packages in PACKAGES that are not installed yet (nothing to do when all are).
debs:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "apt-get install $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# The whole suite; pytest's own exit status (5 = no tests ran) fails the target.
test: setup
	@$(MAKE) --no-print-directory debs PACKAGES="$(TEST_DEB_PACKAGES)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Skips the end-to-end runs on real data.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The main job on the bundled demo corpus, local Ray, no flags.
demo: setup
	$(BIN)/sdt-ray demo

# The foundation's real-data check: MELD text, train's defaults, 2 workers, 3 seeds,
# dev-selected, then test figures (mean ± std). About 5 minutes per seed on 2 cores.
MELD_DIR ?= ../shared/data/meld
MELD_OUT ?= runs/meld-text
SEEDS    ?= 0 1 2
meld-text: setup
	$(BIN)/sdt-ray import meld $(MELD_DIR) $(MELD_OUT)/utterances.parquet
	$(BIN)/sdt-ray extract --input $(MELD_OUT)/utterances.parquet --output $(MELD_OUT)/features --overwrite
	stamp=$$(date +%Y%m%d-%H%M%S); evals=""; \
	for s in $(SEEDS); do \
	  run=$(MELD_OUT)/$$stamp/seed$$s; \
	  $(BIN)/sdt-ray train --features $(MELD_OUT)/features --output $$run --workers 2 --seed $$s || exit 1; \
	  $(BIN)/sdt-ray evaluate --checkpoint $$run/best --features $(MELD_OUT)/features --split test --output $$run/eval-test || exit 1; \
	  evals="$$evals $$run/eval-test"; \
	done; \
	$(BIN)/sdt-ray summarize $$evals --output $(MELD_OUT)/$$stamp/summary.json

# The checkpoint that `make demo` scores with (sdt_ray/demo/model): MELD train through MiniLM,
# jobs/demo_model.yaml, selected on dev. About 8 minutes on 2 cores; replaces the bundled copy.
DEMO_MODEL_OUT ?= runs/demo-model
demo-model: setup
	$(BIN)/sdt-ray import meld $(MELD_DIR) $(DEMO_MODEL_OUT)/utterances.parquet
	$(BIN)/sdt-ray extract --input $(DEMO_MODEL_OUT)/utterances.parquet --output $(DEMO_MODEL_OUT)/features --overwrite
	run=$(DEMO_MODEL_OUT)/run-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/sdt-ray train --features $(DEMO_MODEL_OUT)/features --output $$run --config jobs/demo_model.yaml --seed 0 && \
	rm -rf sdt_ray/demo/model && cp -r $$run/best sdt_ray/demo/model

bench: setup
	$(BIN)/python -m sdt_ray.bench --output bench

clean:
	rm -rf $(VENV) demo-output bench .pytest_cache
