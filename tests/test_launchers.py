"""Sweep expansion and the TPU pod launcher's dry run."""

import pathlib
import os
import subprocess
import sys

import pytest

from aotd_jax.train import sweep
from configs.distill import lnv7b
from configs.toyworld import distill as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_hyper_product_zip_and_names():
  h = sweep.Hyper()
  v = h.product([h.sweep("seed", [0, 1]), h.sweep("optim.learning_rate", [1e-4, 3e-4])])
  assert len(v) == 4 and {"seed": 1, "optim.learning_rate": 3e-4} in v
  assert h.zip([h.sweep("a", [1, 2]), h.sweep("b", [3, 4])]) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="equal length"):
    h.zip([h.sweep("a", [1, 2]), h.sweep("b", [3])])
  assert sweep.variant_name({"seed": 1, "optim.learning_rate": 0.1}) == "learning_rate=0.1,seed=1"


def test_toy_config_sweep_prints_one_command_per_variant(tmp_path):
  assert len(sweep.expand(toy)) == 4
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.sweep",
      "--config=configs/toyworld/distill.py:llama",
      f"--workdir={tmp_path}",
      "--print_only",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert len(lines) == 4
  assert all("--config.rationale_weight=" in l and "--config.seed=" in l for l in lines)


def test_pod_launcher_dry_run_prints_gcloud_command():
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.tpu.pod",
      "--tpu=pod1",
      "--zone=us-east5-a",
      "--config=configs/distill/lnv7b.py:tpu_v5p_128",
      "--workdir=gs://b/run",
      "--override=total_steps=10",
      "--dry_run",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0, r.stderr
  out = r.stdout
  assert out.startswith("gcloud compute tpus tpu-vm ssh pod1") and "--worker=all" in out
  assert "--config.distributed=True" in out and "--config.total_steps=10" in out


def test_pod_launcher_passes_config_flags_env_and_logs_per_worker():
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.tpu.pod",
      "--tpu=pod1",
      "--zone=z",
      "--config=configs/distill/lnv7b.py:tpu_v5p_128",
      "--workdir=gs://b/run",
      "--config.total_steps=7",
      "--libtpu_init_args=--xla_tpu_x=1",
      "--dry_run",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0, r.stderr
  out = r.stdout
  assert "--config.total_steps=7" in out and "export LIBTPU_INIT_ARGS=--xla_tpu_x=1" in out
  assert "nohup python -m launch.train" in out and "~/aotd_logs/train-$(hostname).log" in out
  setup = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.tpu.pod",
      "--tpu=pod1",
      "--zone=z",
      "--config=configs/distill/lnv7b.py:tpu_v5p_128",
      "--workdir=gs://b/run",
      "--setup",
      "--dry_run",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert setup.returncode == 0, setup.stderr
  assert "pip install -q -c constraints.txt -e" in setup.stdout and ".[tpu,gcs]" in setup.stdout
  assert "launch.train" not in setup.stdout
  assert os.path.isfile(os.path.join(ROOT, "constraints.txt"))


def test_sweep_passes_config_flags_and_big_vision_keys():
  assert sweep.command(
    "c.py", "w", {"config.lr": 1, "seed": 2}, extra=["--config.total_steps=3"]
  ) == [
    "python",
    "-m",
    "launch.train",
    "--config=c.py",
    "--workdir=w",
    "--config.total_steps=3",
    "--config.lr=1",
    "--config.seed=2",
  ]
  assert sweep.variant_name({"config.optim.lr": 1}) == "lr=1"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.sweep",
      "--config=configs/toyworld/distill.py:llama",
      "--workdir=w",
      "--print_only",
      "--config.total_steps=3",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0, r.stderr
  assert all("--config.total_steps=3" in l for l in r.stdout.strip().splitlines())


def test_real_configs_document_meshes():
  for arg in ("tpu_v5p_128", "h100x8"):
    c = lnv7b.get_config(arg)
    assert c.optim.learning_rate == 4e-5 and c.optim.warmup_ratio == 0.03
    assert c.student.compute.freeze_vision_tower and c.rationale_weight == 1.0
  with pytest.raises(ValueError, match="not in"):
    lnv7b.get_config("v4")
