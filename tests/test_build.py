"""The Bazel BUILD file lists every module and test of the tree."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_build_file_in_step_with_tree():
  result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_build.py"), "--check"],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_is_listed():
  build = (ROOT / "BUILD").read_text()
  for root in ("aotd_jax", "experts"):
    for path in (ROOT / root).rglob("*.py"):
      assert str(path.relative_to(ROOT)) in build, f"{path} missing from BUILD"
  for test in (ROOT / "tests").glob("test_*.py"):
    assert f'name = "{test.stem}"' in build
