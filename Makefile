# Quick start: `make demo` (install + train on the bundled digits), `make test` (install + test suite).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= 2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trainwell-installed

.PHONY: demo test install bench docs labs mutation clean

demo: $(STAMP)
	$(BIN)/trainwell train --out runs/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

# mypy over src/trainwell with the settings in pyproject.toml (docs/typing.md).
.PHONY: typecheck
typecheck: $(STAMP)
	$(BIN)/mypy

install: $(STAMP)

# torch is pinned first: a CPU wheel of it lies on the build machines, while an unpinned
# `torch` would resolve to a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

# Regenerate the generated docs into docs/: reference.md, foundations.md, doctor.md (runs the doctor's
# planted-fault suite, about 15 s). `python -m trainwell.docs --check` says which are stale.
docs: $(STAMP)
	$(BIN)/python -m trainwell.docs --out docs

# Run every lab with its defaults (runs/labs/) and regenerate docs/labs.md and its figures.
labs: $(STAMP)
	$(BIN)/python -m trainwell.docs labs --out docs --readme README.md

bench: $(STAMP)
	$(BIN)/python bench/bench_trainer.py

# Mutation testing (mutmut, slow, not in CI): one module at a time with only its own tests, niced, one
# worker; MODULES="train/mix.py nn/init.py" picks some. Results: .mutation/<module>/summary.txt.
mutation: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[mutation]"
	$(BIN)/python tools/mutation.py $(MODULES)

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info .mutation
