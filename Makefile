# Two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
# CPU machines take the CPU wheel of torch that pip can find offline here; GPU machines take PyPI's default.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4,<2.15" || echo "torch==2.13.0")
EXTRAS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "gpu,dev" || echo "cpu,dev")
BIN := $(VENV)/bin
# Keyed on the pins and on this checkout's path (the package is installed editable from it).
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(CURDIR)) | cksum | cut -d" " -f1)

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=40 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-output
