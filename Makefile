# The two commands of the README: `make demo` and `make test`. Each creates the virtualenv
# (.venv) on first use and installs the package with its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir
DEMO_CONFIG ?= configs/demo.py:quick

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m launch.demo --config=$(DEMO_CONFIG) --workdir=$(WORKDIR)

test: $(VENV)/.installed
	# headless Chromium renders the trace viewer in tests/test_viewer.py (Debian package)
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "no chromium could be installed: the viewer test skips"
	# two workers, each test file on one (module fixtures such as the demo run once): 9:50 -> 7:30 on 2 cores
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# the edit loop: the same suite minus the tests marked `slow` (see CONTRIBUTING.md, "Tests")
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

.PHONY: install demo test test-fast
