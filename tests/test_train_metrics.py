"""Training metrics: TensorBoard events without TensorFlow, JSONL history with `train/` tags,
curves, MFU over the global peak, lr / ETA in the loop, the config saved and guarded on resume."""

import glob
import json
import os
import subprocess
import sys

import pytest

from aotd_jax.train import checkpoint, metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_writer_leaves_events_history_and_plot(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path))
  for step in range(1, 4):
    w.write(
      step, {"loss": 3.0 / step, "label_loss": 1.0, "rationale_loss": 2.0 / step, "mfu": None}
    )
  w.write(3, {"accuracy": 0.5}, prefix="eval/")
  w.write_text("config", "a: 1\nb: 2")
  w.close()
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  rows = w.history()
  assert [r["step"] for r in rows] == [1, 2, 3, 3]
  assert set(rows[0]) == {"step", "time", "train/loss", "train/label_loss", "train/rationale_loss"}
  assert rows[-1]["eval/accuracy"] == 0.5
  assert (tmp_path / "curves.png").stat().st_size > 1000
  assert "tensorflow" not in sys.modules


def test_disabled_writer_writes_nothing(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path / "w"), enabled=False)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not (tmp_path / "w").exists()


def test_mfu_is_model_flops_over_time_over_peak():
  assert metrics.mfu(2e12, 0.5, 8e12) == pytest.approx(0.5)
  assert metrics.mfu(1.0, 0.0, 1.0) is None and metrics.mfu(1.0, 1.0, 0.0) is None


def test_loop_logs_lr_tokens_eta_and_global_mfu(tmp_path):
  from aotd_jax import sharding
  from aotd_jax.train import build, data as train_data
  from aotd_jax.train.loop import LoopConfig, train_loop
  from aotd_jax.train.optim import learning_rate_schedule, make_optimizer
  from aotd_jax.train.trainer import Trainer
  from configs.toyworld import distill as toy

  cfg = toy.get_config("llama")
  cfg.data.seq_len = 16
  mesh = sharding.make_mesh({"data": -1})
  student = build.build_student(cfg.student, mesh=mesh, seed=0)
  schedule = learning_rate_schedule(cfg.optim, 3)
  trainer = Trainer(student, make_optimizer(cfg.optim, 3), mesh=mesh, schedule=schedule)
  data = train_data.make_train_data(cfg, student)
  writer = metrics.MetricsWriter(tmp_path)
  train_loop(
    trainer, data, LoopConfig(total_steps=3, peak_flops=1e9), writer=writer, flops_per_token=100.0
  )
  writer.close()
  rows = writer.history()
  assert [r["train/learning_rate"] for r in rows] == pytest.approx(
    [float(schedule(i)) for i in range(3)]
  )
  tokens = 8 * 16  # at most every position of the global batch (8 rows of 16)
  for r in rows:
    for key in ("train/grad_norm", "train/tokens_per_s", "train/step_seconds", "train/eta_seconds"):
      assert key in r, (key, r)
    # MFU divides by every chip's peak (8 devices here)
    got_tokens = r["train/tokens_per_s"] * r["train/step_seconds"]
    assert r["train/mfu"] == pytest.approx(
      100.0 * got_tokens / r["train/step_seconds"] / (8e9), rel=1e-6
    )
    assert 0 < got_tokens <= tokens
  assert rows[-1]["train/eta_seconds"] == 0.0


def test_config_changes_name_guarded_keys_only():
  old = {
    "batch_size": 8,
    "rationale_weight": 1.0,
    "total_steps": 10,
    "seed": 0,
    "data": {"mixing": "weighted", "num_workers": 2, "cot": [{"path": "a"}]},
  }
  new = json.loads(json.dumps(old))
  new.update(seed=1)
  new["data"]["num_workers"] = 8
  assert checkpoint.config_changes(old, new) == []
  new.update(batch_size=16, rationale_weight=0.5)
  new["data"]["mixing"] = "concat_epoch"
  assert checkpoint.config_changes(old, new) == [
    "batch_size: 8 -> 16",
    "data.mixing: 'weighted' -> 'concat_epoch'",
    "rationale_weight: 1.0 -> 0.5",
  ]
  with pytest.raises(ValueError, match="allow_changes=True"):
    checkpoint.check_resume_config(old, new, allow_changes=False)
  assert len(checkpoint.check_resume_config(old, new, allow_changes=True)) == 3


@pytest.mark.slow
def test_resume_with_another_batch_size_is_refused_and_config_is_in_the_checkpoint(tmp_path):
  def train(*extra):
    cmd = [
      sys.executable,
      "-m",
      "launch.train",
      f"--config={ROOT}/configs/toyworld/distill.py:llama",
      f"--workdir={tmp_path}",
      "--config.total_steps=2",
      "--config.checkpoint_every=2",
      "--config.data.seq_len=16",
      *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

  r = train()
  assert r.returncode == 0, r.stderr[-3000:]
  meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "metadata").read_text())
  assert meta["config"]["batch_size"] == 8 and meta["config"]["student"]["architecture"]
  r = train("--config.batch_size=16")
  assert r.returncode == 4, r.stderr[-3000:]
  assert "batch_size: 8 -> 16" in r.stderr and "allow_changes" in r.stderr


@pytest.mark.parametrize("stop_at", [1, 2])
def test_a_stop_after_a_checkpoint_step_saves_once_and_resumes(tmp_path, stop_at):
  """A SIGTERM that arrived while a checkpoint step ran (step 2 of checkpoint_every=2) saved
  that step, then saved it again on the stop: Orbax's StepAlreadyExistsError, a traceback and
  exit 1 instead of the preemption's clean exit 0. The stop now saves only a step not saved."""
  from aotd_jax import sharding
  from aotd_jax.train import build, data as train_data
  from aotd_jax.train.checkpoint import Checkpointer
  from aotd_jax.train.loop import LoopConfig, train_loop
  from aotd_jax.train.optim import make_optimizer
  from aotd_jax.train.trainer import Trainer
  from configs.toyworld import distill as toy

  cfg = toy.get_config("llama")
  cfg.data.seq_len = 16
  mesh = sharding.make_mesh({"data": -1})
  loop = LoopConfig(total_steps=4, checkpoint_every=2)

  def run(stop):
    student = build.build_student(cfg.student, mesh=mesh, seed=0)
    trainer = Trainer(student, make_optimizer(cfg.optim, 4), mesh=mesh)
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    try:
      result = train_loop(
        trainer,
        train_data.make_train_data(cfg, student),
        loop,
        checkpointer=checkpointer,
        stop_requested=lambda: stop(trainer.step),
      )
      checkpointer.wait()
      return result, checkpointer.all_steps()
    finally:
      checkpointer.close()

  result, steps = run(lambda step: step == stop_at)
  assert (result.status, result.step, steps) == ("preempted", stop_at, [stop_at])
  result, steps = run(lambda step: False)  # the same command again resumes
  assert (result.status, result.step) == ("done", 4) and steps[-1] == 4
