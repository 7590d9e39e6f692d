"""Memory figures of this process: host RSS (now and its peak) and the accelerators' bytes in use.

Shared by the student's evaluation (`aotd_jax.eval.efficiency`) and the CoT job's per-question
records (`aotd_jax.agent.job`). Device figures come from JAX's `memory_stats()` and only when
JAX is already imported and its backend reports them (GPU, TPU; not the CPU backend).
"""

from __future__ import annotations

import os
import resource
import sys


def host_peak_rss_mb() -> float:
  """This process's peak resident set size so far (MiB; `getrusage`'s ru_maxrss)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def host_rss_mb() -> float | None:
  """This process's resident set size now (MiB), from /proc/self/statm; None without /proc."""
  try:
    with open("/proc/self/statm") as f:
      resident_pages = int(f.read().split()[1])
  except (OSError, ValueError, IndexError):
    return None
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def device_memory_mb() -> dict[str, float]:
  """`{"device_mb", "device_peak_mb"}`: the largest bytes in use now and peak bytes in use
  over this process's local devices (MiB), or {} when JAX is not imported or its devices do
  not report memory."""
  jax = sys.modules.get("jax")
  if jax is None:
    return {}
  now, peak = [], []
  for device in jax.local_devices():
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      peak.append(stats["peak_bytes_in_use"] / 2**20)
      now.append(stats.get("bytes_in_use", 0) / 2**20)
  if not peak:
    return {}
  return {"device_mb": max(now), "device_peak_mb": max(peak)}


def snapshot() -> dict[str, float]:
  """Host RSS now and peak, plus the device figures where there are any (MiB, rounded). The
  kernel updates the peak lazily, so the peak is at least the RSS now."""
  out = {"peak_rss_mb": host_peak_rss_mb()}
  rss = host_rss_mb()
  if rss is not None:
    out["rss_mb"] = rss
    out["peak_rss_mb"] = max(out["peak_rss_mb"], rss)
  out.update(device_memory_mb())
  return {k: round(v, 1) for k, v in out.items()}
