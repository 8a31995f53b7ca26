# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test setup
setup: $(STAMP)

# torch is pinned to the CPU wheel that ships on this machine kind; an unpinned torch would
# pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[metrics,diffusers,test,deploy]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lazydit demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)
