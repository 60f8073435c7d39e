# Two commands do all the set-up from a fresh clone; both create .venv themselves.
#   make demo   - the main job on the embedded digits data
#   make test   - the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test venv clean bench bench-attacks

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,autoattack]'
	touch $@

demo: venv
	$(BIN)/landscape demo

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile  # two processes, each test file whole in one (its fixtures shared)

# The benchmarks' own environment: the project plus the peer libraries it is compared with (torchattacks,
# the Adversarial Robustness Toolbox), never dependencies of the project. torch is pinned to .venv's
# version when .venv exists, so pip reuses that build instead of fetching another.
.venv-bench/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv .venv-bench
	TV=$$($(BIN)/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null); \
	.venv-bench/bin/pip install --quiet -e . torchattacks adversarial-robustness-toolbox $${TV:+"torch==$$TV"}
	touch $@

# Every benchmark, one table of ratios measured in one run (bench/run_all.py; about 7 minutes on 2 CPU cores).
bench: .venv-bench/.installed
	.venv-bench/bin/python bench/run_all.py

# Our PGD against torchattacks' alone, with its own detailed printout.
bench-attacks: .venv-bench/.installed
	.venv-bench/bin/python bench/attack_peers.py

clean:
	rm -rf $(VENV) .venv-bench build *.egg-info
