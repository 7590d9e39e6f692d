"""Query-independent frame features kept between expert calls: a byte-bounded LRU.

An expert's image side often depends on the frame alone, not on the query: UniVTG's CLIP
image features of a frame are the same whatever action a program grounds. Programs ask for
the same frames again and again (a second `Filter_frames_with_act` in one program, the other
questions of a video: STAR has ~7 per video, and with the whole video as window they see the
same frames), so the features of a frame are computed once and kept, keyed by what determines
them (the clip's identity, its frame size, the source frame id).

`FrameFeatureCache.claim(keys)` tells a caller, per key, whether the value is kept (a hit),
is being computed by another thread (a future to wait on, so concurrent programs asking for
the same frame compute it once), or is its own to compute (a miss: it must then `fill` or
`fail` those keys). Values are arrays (numpy or device) or tuples of them; the cache holds at
most `max_bytes` of them (`nbytes`), dropping the least recently used.

  cache = FrameFeatureCache(64 << 20)
  rows = cache.fetch(keys, compute, wait=lambda future: future.result())

where `compute(missing_keys)` returns one value per key it is given (`fetch` is `claim`, then
`fill` or `fail`, then `Claim.values`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
from typing import Any, Callable, Hashable, Sequence


@dataclasses.dataclass
class FeatureCacheStats:
  """Counters (cumulative except `bytes` and `entries`): keys found kept (`hits`), found
  being computed by another caller (`shared`), claimed to compute (`misses`), dropped for
  room (`evictions`); bytes and entries held now."""

  hits: int = 0
  shared: int = 0
  misses: int = 0
  evictions: int = 0
  bytes: int = 0
  entries: int = 0

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class Claim:
  """What `FrameFeatureCache.claim` found for each of its keys (in order)."""

  keys: list
  kept: dict  # position -> value
  pending: dict  # position -> Future another caller fills
  mine: list  # the distinct keys this caller must fill (or fail)
  futures: dict  # key -> this caller's Future (for keys in `mine`)

  def values(self, wait: Callable[[concurrent.futures.Future], Any]) -> list:
    """The value of every key, in order; `wait(future)` blocks on values still being computed
    (by this caller's `fill`, which must have run, or by another)."""
    out = []
    for i, key in enumerate(self.keys):
      if i in self.kept:
        out.append(self.kept[i])
      else:
        future = self.pending.get(i) or self.futures[key]
        out.append(future.result() if future.done() else wait(future))
    return out


def _nbytes(value) -> int:
  """Bytes of an array, or of the arrays of a tuple / list of them."""
  if isinstance(value, (tuple, list)):
    return sum(_nbytes(v) for v in value)
  return int(getattr(value, "nbytes", 0))


class FrameFeatureCache:
  """A thread-safe LRU of per-frame values bounded by their bytes (see the module docstring).

  Args:
    max_bytes: the most bytes of values kept (> 0).
    name: for messages.
  """

  def __init__(self, max_bytes: int, *, name: str = "frame-features"):
    if max_bytes <= 0:
      raise ValueError(f"{name}: max_bytes must be > 0, got {max_bytes}")
    self.max_bytes, self.name = int(max_bytes), name
    self.stats = FeatureCacheStats()
    self._lock = threading.Lock()
    self._store: collections.OrderedDict = collections.OrderedDict()
    self._inflight: dict[Hashable, concurrent.futures.Future] = {}

  def claim(self, keys: Sequence[Hashable]) -> Claim:
    """Looks up every key: kept values, others' pending futures, and (once per distinct key)
    the keys the caller now owns and must `fill` or `fail`."""
    keys = list(keys)
    kept, pending, mine, futures = {}, {}, [], {}
    with self._lock:
      for i, key in enumerate(keys):
        if key in futures:  # a repeat of a key this caller owns
          continue
        if key in self._store:
          self._store.move_to_end(key)
          kept[i] = self._store[key]
          self.stats.hits += 1
        elif key in self._inflight:
          pending[i] = self._inflight[key]
          self.stats.shared += 1
        else:
          futures[key] = self._inflight[key] = concurrent.futures.Future()
          mine.append(key)
          self.stats.misses += 1
    return Claim(keys, kept, pending, mine, futures)

  def fetch(
    self,
    keys: Sequence[Hashable],
    compute: Callable[[list], Sequence[Any]],
    wait: Callable[[concurrent.futures.Future], Any],
  ) -> list:
    """The value of every key, in order: kept, awaited (`wait(future)`) from another caller
    computing it, or computed here by one `compute(keys this caller claimed)` call (one value
    per key it is given), which is then kept. An error of `compute` reaches this caller and
    those waiting on its keys."""
    claim = self.claim(keys)
    if claim.mine:
      try:
        values = compute(claim.mine)
      except BaseException as e:
        self.fail(claim, e)
        raise
      self.fill(claim, values)
    return claim.values(wait)

  def fill(self, claim: Claim, values: Sequence[Any]) -> None:
    """Keeps `values` (one per key of `claim.mine`, in order) and hands them to the callers
    waiting on them."""
    if len(values) != len(claim.mine):
      raise ValueError(f"{self.name}: {len(values)} values for {len(claim.mine)} claimed keys")
    with self._lock:
      for key, value in zip(claim.mine, values):
        self._inflight.pop(key, None)
        if key in self._store:
          self.stats.bytes -= _nbytes(self._store.pop(key))
        self._store[key] = value
        self.stats.bytes += _nbytes(value)
      while self.stats.bytes > self.max_bytes and len(self._store) > 1:
        _, old = self._store.popitem(last=False)
        self.stats.bytes -= _nbytes(old)
        self.stats.evictions += 1
      self.stats.entries = len(self._store)
    for key, value in zip(claim.mine, values):
      claim.futures[key].set_result(value)

  def fail(self, claim: Claim, error: BaseException) -> None:
    """Releases the claimed keys unfilled: their waiters get `error`, a later claim computes
    them afresh."""
    with self._lock:
      for key in claim.mine:
        self._inflight.pop(key, None)
    for key in claim.mine:
      if not claim.futures[key].done():
        claim.futures[key].set_exception(error)

  def clear(self) -> None:
    """Drops every kept value (the counters stay)."""
    with self._lock:
      self._store.clear()
      self.stats.bytes = self.stats.entries = 0
