"""Training metrics: TensorBoard event files (tensorboardX, no TensorFlow), a log line with the
loss parts, tokens/s and MFU, a JSONL history, and PNG plots of the curves at the end."""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

from absl import logging


def mfu(flops_per_step: float, step_seconds: float, peak_flops: float) -> float:
  """Model FLOPs utilisation: model FLOPs per step ÷ step time ÷ the hardware peak."""
  if step_seconds <= 0 or peak_flops <= 0:
    return 0.0
  return flops_per_step / step_seconds / peak_flops


class MetricsWriter:
  """Writes scalars to TensorBoard and `metrics.jsonl` under `workdir`; plots at `close()`.

  `enabled=False` (every process of a pod but process 0) writes nothing."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.workdir = workdir
    self.enabled = enabled
    if enabled:
      os.makedirs(workdir, exist_ok=True)
    self._history_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter  # pure Python: no TensorFlow needed
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    if self._tb is not None:
      for k, v in scalars.items():
        if v is not None:
          self._tb.add_scalar(k, float(v), step)
    with open(self._history_path, "a") as f:
      f.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")

  def history(self) -> list[dict]:
    if not os.path.exists(self._history_path):
      return []
    with open(self._history_path) as f:
      return [json.loads(line) for line in f if line.strip()]

  def plot(self, keys=("loss", "label_loss", "rationale_loss")) -> str | None:
    """Saves `curves.png` of the given scalars over steps; returns its path."""
    rows = self.history()
    if not rows:
      return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
      pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
      if pts:
        ax.plot(*zip(*pts), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(self.workdir, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self.enabled:
      self.plot()


def log_line(step: int, total: int, m: Mapping[str, float], tokens_per_s: float, mfu_value: float) -> None:
  """One progress line; MFU is shown only when the config gives the hardware peak."""
  mfu_text = f"  MFU {100.0 * mfu_value:.1f}%" if mfu_value > 0 else ""
  logging.info("step %d/%d  loss %.4f  (label %.4f, rationale %.4f)  |g| %.3f  %.0f tok/s%s",
               step, total, m["loss"], m["label_loss"], m["rationale_loss"], m["grad_norm"],
               tokens_per_s, mfu_text)
