"""The prompts are data files: found in a source checkout and in an installed wheel."""

import ast
import pathlib

from aotd_jax.agent import programs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _setup_call() -> dict:
  """The keyword arguments of setup.py's `setuptools.setup(...)` that are literals."""
  tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
  call = next(
    n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "setup"
  )
  out = {}
  for kw in call.keywords:
    try:
      out[kw.arg] = ast.literal_eval(kw.value)
    except ValueError:
      pass
  return out


def test_data_holds_no_python():
  assert not sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "data").rglob("*.py"))


def test_setup_installs_every_prompt_file():
  setup = _setup_call()
  source = ROOT / setup["package_dir"]["aotd_jax.prompts"]
  assert source == ROOT / "data" / "prompts"
  installed = {
    p for pattern in setup["package_data"]["aotd_jax.prompts"] for p in source.glob(pattern)
  }
  shipped = {p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
  assert shipped and shipped <= installed, sorted(
    str(p.relative_to(ROOT)) for p in shipped - installed
  )


def test_installed_prompts_win_over_the_source_tree(tmp_path):
  package = tmp_path / "site" / "aotd_jax"
  package.mkdir(parents=True)
  assert programs.find_prompts_dir(package) == tmp_path / "site" / "data" / "prompts"
  (package / "prompts" / "examples").mkdir(parents=True)
  (package / "prompts" / "examples" / "star.txt").write_text("# Question: q\n")
  assert programs.find_prompts_dir(package) == package / "prompts"
  assert programs.load_examples("star", package / "prompts") == "# Question: q"


def test_source_checkout_reads_data_prompts():
  assert programs.PROMPTS_DIR == ROOT / "data" / "prompts"
  assert programs.read_prompt_file("judge_answer.txt") == (
    ROOT / "data" / "prompts" / "judge_answer.txt"
  ).read_text(encoding="utf-8")


def test_the_toy_worlds_examples_ship_with_its_project():
  from aotd_jax.projects.toyworld import prompts

  folder = ROOT / "aotd_jax" / "projects" / "toyworld"
  assert prompts.PROMPTS_DIR == folder and prompts.PACKAGE == "aotd_jax.projects.toyworld"
  patterns = _setup_call()["package_data"][prompts.PACKAGE]
  assert (folder / "examples" / "toyworld.txt") in {p for pat in patterns for p in folder.glob(pat)}
  assert "def execute_command(" in prompts.few_shot_examples()
  assert not (ROOT / "data" / "prompts" / "examples" / "toyworld.txt").exists()
