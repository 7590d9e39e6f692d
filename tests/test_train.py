"""Distillation trainer: loss parts, mesh equivalence, NaN guard, SIGTERM, SIGKILL + resume."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import aotd_jax  # noqa: F401  (sets Flax's sharding mode)
from aotd_jax import sharding
from aotd_jax.train import build, losses
from aotd_jax.train.optim import make_optimizer, trainable_filter
from aotd_jax.train.trainer import Trainer
from configs.toyworld import distill as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _torch_masked_ce(logits, ids, mask):
  """Reference: torch cross-entropy over the masked next-token targets."""
  lg = torch.tensor(np.asarray(logits))[:, :-1].reshape(-1, logits.shape[-1])
  tgt = torch.tensor(np.asarray(ids))[:, 1:].reshape(-1).long()
  m = torch.tensor(np.asarray(mask))[:, 1:].reshape(-1).bool()
  tgt = torch.where(m, tgt, torch.full_like(tgt, -100))
  return float(torch.nn.functional.cross_entropy(lg, tgt, ignore_index=-100))


def test_loss_parts_match_torch_cross_entropy():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((3, 7, 11)).astype(np.float32)
  ids = rng.integers(0, 11, (3, 7))
  label = (rng.random((3, 7)) < 0.3).astype(np.int32)
  rationale = (rng.random((3, 7)) < 0.5).astype(np.int32) * (1 - label)
  out = losses.distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.asarray(rationale),
    rationale_weight=0.5,
  )
  assert float(out.label_loss) == pytest.approx(_torch_masked_ce(logits, ids, label), rel=1e-5)
  assert float(out.rationale_loss) == pytest.approx(
    _torch_masked_ce(logits, ids, rationale), rel=1e-5
  )
  assert float(out.loss) == pytest.approx(
    float(out.label_loss) + 0.5 * float(out.rationale_loss), rel=1e-6
  )


def test_lambda_zero_without_cot_is_instruction_tuning():
  """λ = 0 and no CoT samples: the objective is the plain answer-token cross-entropy."""
  rng = np.random.default_rng(1)
  logits = rng.standard_normal((2, 9, 13)).astype(np.float32)
  ids = rng.integers(0, 13, (2, 9))
  label = np.zeros((2, 9), np.int32)
  label[:, -2:] = 1
  out = losses.distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.zeros((2, 9), jnp.int32),
    rationale_weight=0.0,
  )
  assert float(out.rationale_loss) == 0.0 and float(out.rationale_tokens) == 0.0
  assert float(out.loss) == pytest.approx(_torch_masked_ce(logits, ids, label), rel=1e-5)
  # and λ does not matter when there is no rationale token
  out1 = losses.distill_loss(
    jnp.asarray(logits),
    jnp.asarray(ids),
    jnp.asarray(label),
    jnp.zeros((2, 9), jnp.int32),
    rationale_weight=1.0,
  )
  assert float(out1.loss) == float(out.loss)


def _losses_on(mesh_cfg, devices, arch="llava", steps=5):
  cfg = toy.get_config(arch)
  mesh = sharding.make_mesh(mesh_cfg, devices)
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  from aotd_jax.train.data import make_train_data

  data = make_train_data(cfg, student)
  trainer = Trainer(
    student, make_optimizer(cfg.optim, steps), mesh=mesh, trainable=trainable_filter(True)
  )
  return [trainer.train_step(next(data)).loss for _ in range(steps)]


@pytest.mark.parametrize("arch", ["llama", pytest.param("llava", marks=pytest.mark.slow)])
def test_sharded_training_matches_one_device(arch):
  one = _losses_on({"data": 1}, jax.devices()[:1], arch)
  eight = _losses_on({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices(), arch)
  np.testing.assert_allclose(eight, one, atol=1e-4, rtol=1e-4)


# Bit-exact comparisons across processes need deterministic kernels: XLA's multi-threaded CPU
# matmuls may split reductions differently from one run to the next on a busy machine. (LLVM -O0:
# the tests' compile setting, tests/conftest.py.)
DETERMINISTIC = dict(
  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0",
  OMP_NUM_THREADS="1",
)


def _train(workdir, *overrides, arch="llama", check=True, launcher="launch.train"):
  """`launcher` runs the toy config; `tests.fault_train` (launch.train with fault injection)
  takes --kill_at_step / --nan_at_step."""
  cmd = [
    sys.executable,
    "-m",
    launcher,
    f"--config={ROOT}/configs/toyworld/distill.py:{arch}",
    f"--workdir={workdir}",
    *overrides,
  ]
  env = dict(os.environ, **DETERMINISTIC)
  return subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300, check=False
  )


def _export(workdir, out):
  """The latest checkpoint as HF tensors, through the export CLI's `main` in process (the
  rehearsal's `convert` stage runs `python -m aotd_jax.hf` itself)."""
  from aotd_jax.hf import io
  from aotd_jax.hf.__main__ import main

  assert main(["export", f"--orbax_dir={workdir}/checkpoints", f"--hf_dir={out}"]) == 0
  return io.read_tensors(str(out))[0]


@pytest.mark.slow  # two training subprocesses and a SIGKILL: ~6 min on 2 busy cores
def test_sigkill_after_checkpoint_then_resume_is_exact(tmp_path):
  steps = ["--config.total_steps=8", "--config.checkpoint_every=2"]
  a = _train(tmp_path / "a", *steps)
  assert a.returncode == 0, a.stderr[-3000:]
  b1 = _train(tmp_path / "b", *steps, "--kill_at_step=4", launcher="tests.fault_train")
  assert b1.returncode == -signal.SIGKILL, b1.stderr[-3000:]
  b2 = _train(tmp_path / "b", *steps)
  assert b2.returncode == 0, b2.stderr[-3000:]
  assert "resumed from step 4" in b2.stderr
  ta, tb = _export(tmp_path / "a", tmp_path / "ea"), _export(tmp_path / "b", tmp_path / "eb")
  assert sorted(ta) == sorted(tb)
  for k in ta:
    np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
  r = _train(
    tmp_path,
    "--config.total_steps=6",
    "--config.checkpoint_every=2",
    "--nan_at_step=5",
    launcher="tests.fault_train",
  )
  assert r.returncode == 3, r.stderr[-3000:]
  assert "non-finite loss" in r.stderr and "step 5" in r.stderr
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps[-1] == 4


@pytest.mark.slow  # a launch.train subprocess (the NaN test keeps one in the fast set)
def test_sigterm_saves_and_exits_cleanly(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "launch.train",
    f"--config={ROOT}/configs/toyworld/distill.py:llama",
    f"--workdir={tmp_path / 'run'}",
    "--config.total_steps=100000",
    "--config.checkpoint_every=1000",
  ]
  # output to files, not pipes: nobody reads a pipe while the run trains, and a full one would
  # block it
  with open(tmp_path / "stdout", "w") as out_f, open(tmp_path / "stderr", "w") as err_f:
    proc = subprocess.Popen(
      cmd, cwd=ROOT, stdout=out_f, stderr=err_f, text=True, env=dict(os.environ, **DETERMINISTIC)
    )
  err = lambda: (tmp_path / "stderr").read_text()[-3000:]  # noqa: E731
  try:
    # The first metrics line comes after the SIGTERM handler is installed (before the loop), so
    # the signal cannot arrive before it (that would kill the process instead); the bound is
    # only a safety net against a hung run, no timing the test relies on.
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 1800
    while not (metrics.exists() and metrics.stat().st_size > 0):
      assert proc.poll() is None, f"exited {proc.returncode} before its first step:\n{err()}"
      assert time.monotonic() < deadline, f"no metrics line after 30 minutes:\n{err()}"
      time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=1800)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  out = (tmp_path / "stdout").read_text()
  assert proc.returncode == 0, err()
  assert "preempted at step" in out
  step = int(out.split("preempted at step")[1].split()[0])
  assert step >= 1 and (tmp_path / "run" / "checkpoints" / str(step)).is_dir()
