# Two commands do all the set-up from a fresh clone; both create .venv themselves.
#   make demo   - the main job on the embedded digits data
#   make test   - the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test venv clean bench-attacks

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,autoattack]'
	touch $@

demo: venv
	$(BIN)/landscape demo

test: venv
	$(BIN)/python -m pytest -q

# Our PGD against torchattacks' (installed only in .venv-bench, never a dependency of the project).
.venv-bench/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -e . torchattacks
	touch $@

bench-attacks: .venv-bench/.installed
	.venv-bench/bin/python bench/attack_peers.py

clean:
	rm -rf $(VENV) .venv-bench build *.egg-info
