"""Training metrics: TensorBoard events without TensorFlow, JSONL history, curves, MFU."""
import glob
import sys

import pytest

from aotd_jax.train import metrics


def test_writer_leaves_events_history_and_plot(tmp_path):
  w = metrics.MetricsWriter(str(tmp_path))
  for step in range(1, 4):
    w.write(step, {"loss": 3.0 / step, "label_loss": 1.0, "rationale_loss": 2.0 / step})
  w.close()
  assert glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
  assert [r["step"] for r in w.history()] == [1, 2, 3]
  assert (tmp_path / "curves.png").stat().st_size > 1000
  assert "tensorflow" not in sys.modules


def test_mfu_is_model_flops_over_time_over_peak():
  assert metrics.mfu(2e12, 0.5, 8e12) == pytest.approx(0.5)
  assert metrics.mfu(1.0, 0.0, 1.0) == 0.0 and metrics.mfu(1.0, 1.0, 0.0) == 0.0
