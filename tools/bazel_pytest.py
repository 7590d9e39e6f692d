"""Entry point of the generated `py_test` targets: runs pytest on the test files given as
arguments (Bazel's `py_test` runs `main` as a script, which alone would only import the tests)."""

import os
import sys

import pytest

if __name__ == "__main__":
  # Bazel runs tests in the runfiles tree; the repository root is the workspace directory there.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  os.chdir(root)
  sys.path.insert(0, root)
  sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
