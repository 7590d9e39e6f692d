"""Every `--config.KEY=...` the docs and the launchers' help name is a key of a shipped config:
a documented override that the config lacks stops the launcher with "the config has no key"
(`--config.data.fit_check=False`, docs/training.md, did)."""

import importlib.util
import pathlib
import re

import ml_collections
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
COT_PATHS = (
  "videos=/d/v,llm=http://127.0.0.1:8000/v1,owlv2=/m/o,univtg=/m/u.ckpt,clip=/m/c,llava=/m/l"
)
# the config files with an argument that builds them (the CoT configs need their files named)
CONFIGS = {
  "configs/distill/lnv7b.py": "h100x8",
  "configs/distill/onevision7b.py": "h100x8",
  "configs/distill/qwen2vl7b.py": "h100x8",
  "configs/cot/star.py": "ann=/d/STAR_train.json," + COT_PATHS,
  "configs/cot/nextqa.py": "ann=/d/train.csv," + COT_PATHS,
  "configs/toyworld/cot.py": None,
  "configs/toyworld/demo.py": None,
  "configs/toyworld/distill.py": None,
  "configs/llama_tiny.py": None,
}
# keys the docs name on purpose as mistakes (the misspelt key of the error-message example)
NOT_KEYS = {"totl_steps"}


def _configs() -> list[ml_collections.ConfigDict]:
  out = []
  for path, arg in CONFIGS.items():
    spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out.append(module.get_config(arg) if arg else module.get_config())
  return out


def _has(config, key: str) -> bool:
  node = config
  for part in key.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False
    node = node[part]
  return True


def _documented_keys() -> dict[str, str]:
  """{key: the first file naming it} over README, docs/*.md and the launchers' docstrings;
  placeholders (`<name>`, `KEY`) left out."""
  paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
  paths += sorted((ROOT / "launch").rglob("*.py"))
  keys = {}
  for path in paths:
    for key in re.findall(r"--config\.([A-Za-z_][\w.]*\w)", path.read_text(encoding="utf-8")):
      if key not in NOT_KEYS and key != "KEY":
        keys.setdefault(key, str(path.relative_to(ROOT)))
  return keys


def test_every_documented_config_override_is_a_key():
  configs = _configs()
  keys = _documented_keys()
  assert "data.fit_check" in keys and len(keys) > 30  # the scan reads what it should
  missing = sorted(f"{where}: --config.{key}" for key, where in keys.items())
  missing = [m for m in missing if not any(_has(c, m.split("--config.")[1]) for c in configs)]
  assert not missing, missing


@pytest.mark.parametrize("key", ["fit_check", "max_skip_fraction", "skip_check_after"])
def test_distill_configs_hold_the_run_checks_docs_training_names(key):
  """docs/training.md tells to set these; a resume across the change is not refused for them."""
  from aotd_jax.train import checkpoint

  config = _configs()[0]
  assert key in config.data
  saved = config.to_dict()
  del saved["data"][key]  # a run saved before the key was in the config
  assert checkpoint.config_changes(saved, config.to_dict()) == []
