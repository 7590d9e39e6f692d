"""Training metrics: TensorBoard event files (tensorboardX, no TensorFlow), a log line with the
loss parts, lr, |g|, tokens/s, MFU and ETA, a JSONL history, and PNG plots of the curves.

Tags carry their phase: `train/loss`, `train/learning_rate`, ..., `eval/<metric>`; the JSONL
rows use the same names. `workdir` may be local or any `etils.epath` filesystem (`gs://`).
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Mapping

from absl import logging
from etils import epath


def mfu(flops_per_step: float, step_seconds: float, peak_flops: float) -> float | None:
  """Model FLOPs utilisation: model FLOPs of the global batch ÷ step time ÷ the global peak
  (per-chip peak × chips). None (not reported) without a peak or a time."""
  if step_seconds <= 0 or not peak_flops or peak_flops <= 0:
    return None
  return flops_per_step / step_seconds / peak_flops


def _workdir_path(workdir: str | os.PathLike) -> epath.Path:
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


class MetricsWriter:
  """Writes scalars to TensorBoard and `metrics.jsonl` under `workdir`; plots at `close()`.

  `enabled=False` (every process of a pod but process 0) writes nothing; `tensorboard=False`
  only the JSONL history and the plot."""

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
    self.workdir = _workdir_path(workdir)
    self.enabled = enabled
    self._history_path = self.workdir / "metrics.jsonl"
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
    if enabled and tensorboard:
      # tensorboardX writes local paths itself and gs:// through google-cloud-storage (gcs extra)
      from tensorboardX import SummaryWriter  # pure Python: no TensorFlow needed

      self._tb = SummaryWriter(os.fspath(self.workdir / "tensorboard"))

  def write(
    self, step: int, scalars: Mapping[str, float | None], *, prefix: str = "train/"
  ) -> None:
    """Scalars of one step; names without a `phase/` get `prefix` (`train/` or `eval/`)."""
    if not self.enabled:
      return
    named = {(k if "/" in k else prefix + k): v for k, v in scalars.items() if v is not None}
    for k, v in named.items():
      if self._tb is not None:
        self._tb.add_scalar(k, float(v), step)
    row = json.dumps({"step": step, "time": time.time(), **named}) + "\n"
    with self._history_path.open("a") as f:
      f.write(row)

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    """Text (the run's config) in TensorBoard's Text tab, shown verbatim."""
    if self._tb is not None:
      self._tb.add_text(tag, "\n".join("    " + line for line in text.splitlines()), step)

  def history(self) -> list[dict]:
    if not self._history_path.exists():
      return []
    return [
      json.loads(line) for line in self._history_path.read_text().splitlines() if line.strip()
    ]

  def plot(self, keys=("train/loss", "train/label_loss", "train/rationale_loss")) -> str | None:
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path = self.workdir / "curves.png"
    path.write_bytes(buf.getvalue())
    return os.fspath(path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
    if self.enabled:
      self.plot()


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def log_line(step: int, total: int, m: Mapping[str, Any]) -> None:
  """One progress line; lr, MFU and ETA appear when known."""
  extra = ""
  if m.get("learning_rate") is not None:
    extra += f"  lr {m['learning_rate']:.3g}"
  extra += f"  |g| {m['grad_norm']:.3f}  {m.get('tokens_per_s', 0.0):.0f} tok/s"
  extra += f"  {m.get('step_seconds', 0.0):.3f} s/step"
  if m.get("mfu") is not None:
    extra += f"  MFU {100.0 * m['mfu']:.1f}%"
  if m.get("eta_seconds") is not None:
    extra += f"  ETA {_duration(m['eta_seconds'])}"
  logging.info(
    "step %d/%d  loss %.4f  (label %.4f, rationale %.4f)%s",
    step,
    total,
    m["loss"],
    m["label_loss"],
    m["rationale_loss"],
    extra,
  )
