# Two commands do all the set-up from a fresh clone; both create .venv themselves.
#   make demo   - the main job on the embedded digits data
#   make test   - the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,autoattack]'
	touch $@

demo: venv
	$(BIN)/landscape demo

test: venv
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
