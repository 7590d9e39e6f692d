"""`aotd_jax.memory_stats`: host RSS now / peak and the devices' bytes in use."""

import sys
import types

import numpy as np

from aotd_jax import memory_stats


def test_host_rss_grows_with_a_touched_buffer_and_peak_bounds_it():
  before = memory_stats.host_rss_mb()
  buf = np.ones(64 * 2**20 // 8)  # 64 MiB, every page written
  after = memory_stats.host_rss_mb()
  assert after - before > 48, (before, after)
  assert memory_stats.host_peak_rss_mb() >= after - 1
  del buf


class _Device:
  def __init__(self, stats):
    self._stats = stats

  def memory_stats(self):
    return self._stats


def test_device_memory_is_the_largest_over_local_devices(monkeypatch):
  fake = types.SimpleNamespace(
    local_devices=lambda: [
      _Device({"bytes_in_use": 2 * 2**20, "peak_bytes_in_use": 10 * 2**20}),
      _Device({"bytes_in_use": 3 * 2**20, "peak_bytes_in_use": 6 * 2**20}),
    ]
  )
  monkeypatch.setitem(sys.modules, "jax", fake)
  assert memory_stats.device_memory_mb() == {"device_mb": 3.0, "device_peak_mb": 10.0}
  snap = memory_stats.snapshot()
  assert (snap["device_mb"], snap["device_peak_mb"]) == (3.0, 10.0)
  assert snap["peak_rss_mb"] > 0 and snap["rss_mb"] > 0


def test_no_device_figures_without_jax_or_on_a_backend_without_stats(monkeypatch):
  monkeypatch.delitem(sys.modules, "jax", raising=False)
  assert memory_stats.device_memory_mb() == {}
  monkeypatch.setitem(
    sys.modules, "jax", types.SimpleNamespace(local_devices=lambda: [_Device(None), _Device({})])
  )
  assert memory_stats.device_memory_mb() == {}
  assert set(memory_stats.snapshot()) == {"peak_rss_mb", "rss_mb"}
