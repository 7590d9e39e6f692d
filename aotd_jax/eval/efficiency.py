"""Seconds per question and peak memory, measured the same way for the agent and the student."""

from __future__ import annotations

import contextlib
import dataclasses
import time

from aotd_jax import memory_stats


@dataclasses.dataclass
class Efficiency:
  seconds: float = 0.0
  questions: int = 0
  peak_mb: float = 0.0
  memory_kind: str = "host_rss"

  @property
  def seconds_per_question(self) -> float:
    return self.seconds / self.questions if self.questions else 0.0

  def to_dict(self) -> dict:
    return {
      "seconds": self.seconds,
      "questions": self.questions,
      "seconds_per_question": self.seconds_per_question,
      "peak_mb": self.peak_mb,
      "memory_kind": self.memory_kind,
    }


@contextlib.contextmanager
def measure(questions: int):
  """Times a block over `questions` questions and records peak memory: the accelerator's
  `peak_bytes_in_use` where the backend reports it (GPU/TPU), else the process's peak RSS.
  On CPU the RSS peak is process-wide, so measure the lighter system first or in its own
  process."""
  out = Efficiency(questions=questions)
  t0 = time.perf_counter()
  try:
    yield out
  finally:
    out.seconds = time.perf_counter() - t0
    device = memory_stats.device_memory_mb().get("device_peak_mb")
    if device is not None:
      out.peak_mb, out.memory_kind = device, "device_peak"
    else:
      out.peak_mb, out.memory_kind = memory_stats.host_peak_rss_mb(), "host_rss"
