"""The Bazel BUILD file lists every module and test of the tree."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_build_file_in_step_with_tree():
  result = subprocess.run(
    [sys.executable, str(ROOT / "tools" / "gen_build.py"), "--check"],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_is_listed():
  build = (ROOT / "BUILD").read_text()
  for root in ("aotd_jax", "experts"):
    for path in (ROOT / root).rglob("*.py"):
      assert str(path.relative_to(ROOT)) in build, f"{path} missing from BUILD"
  for test in (ROOT / "tests").glob("test_*.py"):
    assert f'name = "{test.stem}"' in build


def test_tests_run_pytest_and_every_launcher_has_a_binary():
  build = (ROOT / "BUILD").read_text()
  assert 'main = "tools/bazel_pytest.py",\n    args = ["tests/test_build.py"]' in build
  assert "pytest.main" in (ROOT / "tools" / "bazel_pytest.py").read_text()
  for name in ("launch_train", "launch_export", "launch_sweep", "launch_tpu_pod"):
    assert f'name = "{name}"' in build, name
  assert "@rules_python" not in build  # native rules: no external repository to fetch


def test_bazel_pytest_runner_runs_a_test_file(tmp_path):
  test = tmp_path / "test_probe.py"
  test.write_text("def test_fails():\n  assert False\n")
  r = subprocess.run(
    [sys.executable, str(ROOT / "tools" / "bazel_pytest.py"), str(test)],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout + r.stderr


def test_bazel_test_script_skips_visibly_where_bazel_cannot_run(tmp_path):
  """tools/bazel_test.sh (run by `make test`) exits 0 with a SKIPPED line, running nothing, where
  bazel or Debian's mock repositories are missing."""
  import shutil

  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  os_env = {"PATH": str(bin_dir)}
  (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
  script = [shutil.which("bash"), str(ROOT / "tools" / "bazel_test.sh")]
  r = subprocess.run(script, capture_output=True, text=True, env=os_env, timeout=60)
  assert r.returncode == 0 and "bazel_test: SKIPPED, bazel is not installed" in r.stdout, (
    r.stdout + r.stderr
  )
  (bin_dir / "bazel").write_text("#!/bin/sh\necho bazel ran\nexit 3\n")
  (bin_dir / "bazel").chmod(0o755)
  r = subprocess.run(
    script,
    capture_output=True,
    text=True,
    timeout=60,
    env={**os_env, "BAZEL_MOCK_REPOS": str(tmp_path / "none")},
  )
  assert r.returncode == 0 and "bazel_test: SKIPPED, no " in r.stdout, r.stdout + r.stderr
  assert "bazel ran" not in r.stdout
  for repo in ("rules_cc", "rules_java"):  # bazel can run, but the interpreter is missing
    (tmp_path / "mock" / repo).mkdir(parents=True)
  r = subprocess.run(
    script,
    capture_output=True,
    text=True,
    timeout=60,
    env={
      **os_env,
      "BAZEL_MOCK_REPOS": str(tmp_path / "mock"),
      "PYTHON": str(tmp_path / "none" / "python"),
    },
  )
  assert r.returncode == 1 and "no interpreter at PYTHON=" in r.stderr, r.stdout + r.stderr


def test_library_deps_are_the_units_imports_and_a_cycle_is_refused():
  sys.path.insert(0, str(ROOT / "tools"))
  try:
    import gen_build  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(ROOT / "tools"))
  deps = gen_build.unit_deps()
  assert deps["aotd_jax"] == []  # the core imports no experts, projects or configs
  assert "experts" in deps["aotd_jax_projects"] and "aotd_jax" in deps["experts"]
  assert gen_build.unit_of("aotd_jax.projects.toyworld.world") == "aotd_jax_projects"
  assert gen_build.unit_of("aotd_jax.hf.io") == "aotd_jax" and gen_build.unit_of("numpy") is None
  with pytest.raises(SystemExit, match="cycle between Bazel targets: a -> b -> a"):
    gen_build._check_acyclic({"a": ["b"], "b": ["a"]})
