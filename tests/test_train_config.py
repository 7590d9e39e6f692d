"""The command line (issue 19, item 8): tiny step counts train, and bad flags or values fail
with the flag's name, exit status 2 and no traceback."""

import pathlib
import subprocess
import sys

import numpy as np
import optax
import pytest

from aotd_jax.train import config_check
from aotd_jax.train.optim import make_optimizer
from configs.distill import lnv7b
from configs.toyworld import distill as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("total", [1, 2, 3])
def test_tiny_total_steps_schedule(total):
  """total_steps=1 used to fail inside optax (cosine decay over 0 steps)."""
  cfg = dict(learning_rate=1e-3, warmup_ratio=0.03, final_lr_ratio=0.1)
  tx = make_optimizer(cfg, total)
  params = {"w": np.ones(3, np.float32)}
  state, new = tx.init(params), params
  for _ in range(total):  # the run's steps: finite, and the last one (at least) moves
    updates, state = tx.update({"w": np.ones(3, np.float32)}, state, new)
    new = optax.apply_updates(new, updates)
  assert np.all(np.isfinite(new["w"])) and not np.array_equal(new["w"], params["w"])


@pytest.mark.parametrize(
  "key,value,flag",
  [
    ("total_steps", -1, "--config.total_steps=-1: must be >= 1"),
    ("batch_size", 0, "--config.batch_size=0: must be >= 1"),
    ("checkpoint_every", 0, "--config.checkpoint_every=0"),
    ("rationale_weight", -1.0, "--config.rationale_weight=-1.0: must be >= 0.0"),
  ],
)
def test_config_check_names_the_flag(key, value, flag):
  cfg = toy.get_config()
  config_check.check_train_config(cfg)
  cfg[key] = value
  with pytest.raises(config_check.ConfigError, match=flag.replace(".", r"\.").replace("+", r"\+")):
    config_check.check_train_config(cfg)


def test_config_check_nested_and_lnv7b_ok():
  config_check.check_train_config(lnv7b.get_config())
  cfg = toy.get_config()
  cfg.optim.learning_rate = 0.0
  cfg.data.mixing = "random"
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check_train_config(cfg)
  assert "--config.optim.learning_rate=0.0: must be > 0.0" in str(e.value)
  assert "--config.data.mixing='random'" in str(e.value)


def test_config_check_names_a_bad_compute_option():
  import ml_collections

  cfg = toy.get_config()
  compute = cfg.student.compute.to_dict()
  cfg.student.compute = ml_collections.ConfigDict({**compute, "remat": True})  # not a policy name
  with pytest.raises(config_check.ConfigError, match=r"--config\.student\.compute: .*remat=True"):
    config_check.check_train_config(cfg)
  cfg.student.compute = ml_collections.ConfigDict({**compute, "flash": True})
  with pytest.raises(config_check.ConfigError, match=r"unknown compute option\(s\) \['flash'\]"):
    config_check.check_train_config(cfg)


def test_launcher_errors_name_the_flag_without_a_traceback(tmp_path):
  def run(*extra):
    return subprocess.run(
      [
        sys.executable,
        "-m",
        "launch.train",
        "--config=configs/toyworld/distill.py",
        f"--workdir={tmp_path}",
        *extra,
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )

  for extra, want in [
    (
      ("--config.totl_steps=3",),
      "--config.totl_steps: the config has no key 'totl_steps' (did you mean 'total_steps'?)",
    ),
    (("--config.batch_size=0",), "--config.batch_size=0: must be >= 1"),
  ]:
    out = run(*extra)
    assert out.returncode == 2, out.stderr[-2000:]
    assert want in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_shared_config_arg_parser():
  from configs.common import parse_arg

  keys = ("target", "x", "y")
  assert parse_arg("b,y=2", keys, where="c.py", positional="target", defaults={"x": "1"}) == dict(
    target="b", x="1", y="2"
  )
  assert parse_arg(None, keys, where="c.py") == {}
  with pytest.raises(ValueError, match=r"c.py: option 'b': expected key=value with key in"):
    parse_arg("b", keys, where="c.py")
  with pytest.raises(ValueError, match=r"c.py: option 'z=1': expected key=value"):
    parse_arg("t,z=1", keys, where="c.py", positional="target")
  with pytest.raises(ValueError, match=r"c.py: option 'x' given twice"):
    parse_arg("x=1,x=2", keys, where="c.py")
  with pytest.raises(ValueError, match="given twice"):
    lnv7b.get_config("h100x8,hf_dir=/a,hf_dir=/b")


def test_switches_runlocal_and_one_value_configs():
  from configs.common import parse_arg
  from configs.cot import star

  assert parse_arg("runlocal,x=1", ("x",), where="c.py", switches=("runlocal",)) == dict(
    runlocal=True, x="1"
  )
  assert parse_arg("", ("x",), where="c.py", switches=("runlocal",)) == dict(runlocal=False)
  full, local = lnv7b.get_config("h100x8"), lnv7b.get_config("h100x8,runlocal")
  assert (full.batch_size, local.batch_size, local.total_steps, local.data.num_workers) == (
    64,
    2,
    4,
    0,
  )
  config_check.check_train_config(local)
  paths = "owlv2=o,univtg=u,clip=c,llava=l,llm=http://x/v1"
  assert star.get_config(f"ann=a.json,videos=v,{paths},runlocal").max_questions == 4
  assert star.get_config(f"ann=a.json,videos=v,{paths}").max_questions == 0
  with pytest.raises(
    ValueError, match=r"configs/toyworld/distill.py: option 'x=1': the arg is one value"
  ):
    toy.get_config("llava,x=1")


def test_configs_import_no_other_config():
  """Every config file imports `configs.common` at most: shared pieces live there."""
  import ast

  for path in sorted((ROOT / "configs").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      names = (
        [a.name for a in node.names]
        if isinstance(node, ast.Import)
        else [node.module or ""]
        if isinstance(node, ast.ImportFrom)
        else []
      )
      for name in names:
        if name.split(".")[0] == "configs":
          assert name == "configs.common" or (
            name == "configs" and [a.name for a in node.names] == ["common"]
          ), f"{path.relative_to(ROOT)}: {name}"


@pytest.mark.parametrize("target,devices", [("h100x8", 8), ("tpu_v5p_128", 64)])
def test_a_preset_started_on_another_device_count_is_refused(target, devices):
  """`lnv7b.py:h100x8` on a CPU box used to end in an XLA out-of-memory traceback while the 7B
  student was built; it stops first, naming the flag, the count and `runlocal`."""
  cfg = lnv7b.get_config(target)
  assert cfg.expected_devices == devices
  config_check.check_devices(cfg, devices, "gpu")  # the count it is sized for
  with pytest.raises(config_check.ConfigError) as e:
    config_check.check_devices(cfg, 1, "cpu")
  msg = str(e.value)
  assert f"--config.expected_devices={devices}" in msg and "1 (cpu)" in msg
  assert ",runlocal" in msg and "--config.expected_devices=1" in msg
  cfg.expected_devices = 0  # the deliberate override: no check
  config_check.check_devices(cfg, 1, "cpu")
  assert lnv7b.get_config(f"{target},runlocal").expected_devices == 0
