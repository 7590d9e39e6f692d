#!/usr/bin/env bash
# `bazel test` on the given targets (default: a few quick ones), offline, with Debian's
# `bazel-bootstrap` (Bazel 4.2.3) and the Python interpreter first on the PATH (the venv with
# this package's requirements; tools/gen_build.py writes BUILD for Bazel's native Python rules).
#
#   tools/bazel_test.sh                      # //:test_build //:test_architecture //:test_paths
#   tools/bazel_test.sh //:test_cot          # any py_test of BUILD
#
# Bazel's default WORKSPACE fetches rules_cc and rules_java from GitHub, and every test rule
# names the downloaded coverage tools: offline, rules_cc / rules_java come from the mock
# repositories of Debian's `bazel-bootstrap-source` (forwarders to Bazel 4's native rules; the
# rules_cc that the `bazel-rules-cc` package ships is too new for 4.2.3), and the coverage
# tools from tools/bazel/no_coverage (so `bazel coverage` says it is not set up). Exits 0 with
# a message, running nothing, where bazel or the mock repositories are missing.
#
#   apt-get install bazel-bootstrap bazel-bootstrap-source
set -euo pipefail
cd "$(dirname "$0")/.."
MOCK_REPOS="${BAZEL_MOCK_REPOS:-/usr/src/bazel-bootstrap/mock_repos}"
if ! command -v bazel > /dev/null; then
  echo "bazel_test: SKIPPED, bazel is not installed (apt-get install bazel-bootstrap bazel-bootstrap-source)"
  exit 0
fi
if [[ ! -d "$MOCK_REPOS/rules_cc" || ! -d "$MOCK_REPOS/rules_java" ]]; then
  echo "bazel_test: SKIPPED, no $MOCK_REPOS/rules_cc and rules_java (apt-get install bazel-bootstrap-source," \
       "or set BAZEL_MOCK_REPOS)"
  exit 0
fi
PYTHON="${PYTHON:-.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
  echo "bazel_test: no interpreter at PYTHON=$PYTHON (make install creates .venv)" >&2
  exit 1
fi
PYTHON_BIN="$(dirname "$PYTHON")"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(//:test_build //:test_architecture //:test_paths)
fi
# The interpreter's folder first on the PATH: the autodetected Python toolchain runs `python3`.
# The server stops itself 10 s after the run (it would otherwise stay up for hours holding the
# descriptors it inherited, e.g. a caller's lock file).
PATH="$(cd "$PYTHON_BIN" && pwd):$PATH" exec bazel --max_idle_secs=10 test \
  --override_repository=rules_cc="$MOCK_REPOS/rules_cc" \
  --override_repository=rules_java="$MOCK_REPOS/rules_java" \
  --override_repository=remote_coverage_tools="$PWD/tools/bazel/no_coverage" \
  --test_output=errors "${targets[@]}"
