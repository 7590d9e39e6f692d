# The two commands of the README: `make demo` and `make test`. Each creates the virtualenv
# (.venv) on first use and installs the package with its test extra.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir
DEMO_CONFIG ?= configs/toyworld/demo.py:quick

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m launch.demo --config=$(DEMO_CONFIG) --workdir=$(WORKDIR)

RUN_CACHE ?= .cache/jax-run
test: $(VENV)/.installed
	# lint and formatting first (ruff.toml): pyflakes, lines over 120 columns, `ruff format`
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	# two workers, each test file on one (module fixtures such as the demo run once), the longest
	# files first (tests/conftest.py's LONGEST_FILES, kept in that order); the viewer test renders
	# in a headless Chromium when one is installed, and says it skipped otherwise. JAX's persistent
	# compilation cache lives in a directory of this run only (empty at the start, removed at the
	# end): every XLA program still compiles once per run, and the workers and launcher
	# subprocesses that need the same program again load it instead of compiling it again;
	# every program is kept, however quick to compile (a test that builds the same tiny model
	# again loads its programs: about a fifth of the tests' CPU time)
	rm -rf $(RUN_CACHE) && JAX_COMPILATION_CACHE_DIR=$(abspath $(RUN_CACHE)) \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests; \
	rc=$$?; rm -rf $(RUN_CACHE); exit $$rc
	# then `bazel test` on a few BUILD targets (offline with Debian's bazel-bootstrap; it says
	# SKIPPED and exits 0 where Bazel is not installed)
	PYTHON=$(PY) tools/bazel_test.sh

# the edit loop: the same suite minus the tests marked `slow` (see CONTRIBUTING.md, "Tests"),
# with JAX's persistent compilation cache in .cache/jax (kept between runs, so a rerun loads the
# XLA programs it compiled before; `rm -rf .cache/jax` empties it)
JAX_TEST_CACHE ?= .cache/jax
test-fast: $(VENV)/.installed
	JAX_COMPILATION_CACHE_DIR=$(abspath $(JAX_TEST_CACHE)) JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" tests

.PHONY: install demo test test-fast
