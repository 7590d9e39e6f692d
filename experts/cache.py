"""Expert results served from memory (and optionally disk) when the same call comes again.

A key names everything the result depends on: the model (name as bound in the registry),
the operation, the video (its id, or a content hash of its pixels when it has none), the
source frames (a range `start:end` or a hash of a non-contiguous id list), the query and any
other argument (threshold, top_k, candidate answers). Detection is cached per frame, so a
`Find` on a trimmed clip reuses frames already searched by an earlier call on the full clip.

The disk cache is one JSON-lines file per model under `directory`, appended as results
arrive, read back on first use: re-running or resuming a CoT generation job does not call
the experts again. A line that does not parse (e.g. a job killed mid-write) is reported with
its file and line number, counted in `corrupt_lines` and skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Any, Callable, Sequence

import numpy as np

_MISSING = object()


def frames_key(frame_ids: Sequence[int]) -> str:
  """`start:end` for a contiguous run of source frame ids, else a hash of the id list."""
  ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
  if len(ids) == 0:
    return "empty"
  if np.all(np.diff(ids) == 1):
    return f"{int(ids[0])}:{int(ids[-1]) + 1}"
  return "ids:" + hashlib.sha1(ids.tobytes()).hexdigest()[:16]


def make_key(model: str, op: str, video: str, frames: str, query: Any = None, **extra) -> str:
  """A canonical string key; `query` and `extra` must be JSON-serialisable."""
  payload = json.dumps(
    {"q": query, **extra}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
  )
  return f"{model}|{op}|{video}|{frames}|{payload}"


class ToolCache:
  """Memory cache with an optional JSON-lines disk cache (`directory`), one file per model."""

  def __init__(self, directory: str | None = None, *, enabled: bool = True):
    self.directory = directory
    self.enabled = enabled
    self._memory: dict[str, Any] = {}
    self._loaded: set[str] = set()
    self.hits = 0
    self.misses = 0
    self.disk_hits = 0
    self.corrupt_lines = 0
    if directory:
      os.makedirs(directory, exist_ok=True)

  def __len__(self) -> int:
    return len(self._memory)

  def _path(self, model: str) -> str:
    return os.path.join(self.directory, re.sub(r"[^A-Za-z0-9_.-]+", "_", model) + ".jsonl")

  def _load(self, model: str, decode: Callable[[Any], Any]) -> None:
    if not self.directory or model in self._loaded:
      return
    self._loaded.add(model)
    path = self._path(model)
    if not os.path.exists(path):
      return
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          record = json.loads(line)
          key, value = record["key"], decode(record["value"])
        except (ValueError, KeyError, TypeError) as e:
          self.corrupt_lines += 1
          logging.warning("expert cache %s line %d unreadable (%s); skipped", path, lineno, e)
          continue
        self._memory.setdefault(key, ("disk", value))

  def get(self, key: str, model: str, decode: Callable[[Any], Any] = lambda v: v) -> Any:
    """The cached value or `None` when absent (values are never None)."""
    value = self._lookup(key, model, decode)
    return None if value is _MISSING else value

  def _lookup(self, key: str, model: str, decode) -> Any:
    if not self.enabled:
      return _MISSING
    self._load(model, decode)
    entry = self._memory.get(key, _MISSING)
    if entry is _MISSING:
      self.misses += 1
      return _MISSING
    origin, value = entry
    if origin == "disk":
      self.disk_hits += 1
      self._memory[key] = ("memory", value)
    self.hits += 1
    return value

  def put(
    self, key: str, model: str, value: Any, encode: Callable[[Any], Any] = lambda v: v
  ) -> None:
    """Stores `value` in memory and, with a directory, appends it to the model's file."""
    if not self.enabled:
      return
    self._memory[key] = ("memory", value)
    if self.directory:
      line = json.dumps({"key": key, "value": encode(value)}, ensure_ascii=False)
      with open(self._path(model), "a", encoding="utf-8") as f:
        f.write(line + "\n")

  def get_or_compute(
    self,
    key: str,
    model: str,
    compute: Callable[[], Any],
    *,
    encode: Callable[[Any], Any] = lambda v: v,
    decode: Callable[[Any], Any] = lambda v: v,
  ) -> Any:
    """Serves `key` from the cache, or computes, stores and returns it."""
    value = self._lookup(key, model, decode)
    if value is not _MISSING:
      return value
    value = compute()
    self.put(key, model, value, encode)
    return value

  def stats(self) -> dict:
    return {
      "entries": len(self._memory),
      "hits": self.hits,
      "misses": self.misses,
      "disk_hits": self.disk_hits,
      "corrupt_lines": self.corrupt_lines,
    }
