# The two commands of the README: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs what it needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fxnas-installed

.PHONY: demo test test-long bench bench-quick clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	# xautodl (the real NAS-Bench-201 supernets, for tests): its metadata pins a numpy
	# that does not build on Python 3.11, its model code needs none of it.
	$(PY) -m pip install --quiet --no-deps xautodl==1.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fxnas demo

test: $(STAMP)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(PY) -m pytest -q

test-long: $(STAMP)
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q

bench-quick: $(STAMP)
	$(VENV)/bin/fxnas bench --quick

bench: $(STAMP)
	$(VENV)/bin/fxnas bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
