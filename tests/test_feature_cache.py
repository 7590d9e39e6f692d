"""experts.feature_cache: the byte-bounded LRU of per-frame features (its use by UniVTG and
OWLv2: tests/test_coalesce_experts.py, tests/test_coalesce.py)."""

import threading

import numpy as np
import pytest

from experts.feature_cache import FrameFeatureCache


def test_claim_fill_hit_and_byte_bound():
  cache = FrameFeatureCache(3 * 40)  # room for three 40-byte rows
  claim = cache.claim(["a", "b", "a"])
  assert claim.mine == ["a", "b"] and not claim.kept and not claim.pending
  cache.fill(claim, [np.zeros(10, np.float32), np.ones(10, np.float32)])
  assert [float(v[0]) for v in claim.values(wait=None)] == [0.0, 1.0, 0.0]
  again = cache.claim(["b", "c", "d"])
  assert again.mine == ["c", "d"] and list(again.kept) == [0]
  cache.fill(again, [np.full(10, 2, np.float32), np.full(10, 3, np.float32)])
  s = cache.stats
  assert (s.hits, s.misses, s.evictions, s.entries, s.bytes) == (1, 4, 1, 3, 120)
  assert cache.claim(["a"]).mine == ["a"]  # the least recently used was dropped
  with pytest.raises(ValueError, match="max_bytes must be > 0"):
    FrameFeatureCache(0)


def test_a_key_being_computed_is_awaited_and_a_failure_reaches_its_waiters():
  cache = FrameFeatureCache(1 << 20)
  owner = cache.claim(["k"])
  other = cache.claim(["k"])
  assert other.mine == [] and list(other.pending) == [0] and cache.stats.shared == 1
  waiter = threading.Thread(target=lambda: out.append(other.values(lambda f: f.result())))
  out = []
  waiter.start()
  cache.fill(owner, [np.arange(3)])
  waiter.join(10)
  np.testing.assert_array_equal(out[0][0], np.arange(3))
  failed = cache.claim(["x"])
  late = cache.claim(["x"])
  cache.fail(failed, RuntimeError("tower broke"))
  with pytest.raises(RuntimeError, match="tower broke"):
    late.values(lambda f: f.result())
  assert cache.claim(["x"]).mine == ["x"]  # released: a later call computes it afresh
  with pytest.raises(ValueError, match="1 values for 0 claimed keys"):
    cache.fill(late, [np.arange(2)])
