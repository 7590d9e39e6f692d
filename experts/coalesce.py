"""Dynamic batching across callers: many threads submit rows, one jitted bucketed call runs them.

A CoT job runs many programs at once (`CotJob.num_threads`), and each program calls the same
experts on its own clip: one at a time, a detector sees batches of a few frames. `Coalescer`
is an inference server's dynamic batcher in front of a `BucketedJit`: callers `submit(rows,
*args)` and get a `Future`; a worker thread gathers requests for up to `wait_s` after the
oldest one arrived (or until `max_rows` rows are waiting), runs them as one batch, and
routes each request's rows back.

Two output modes:
  "host":   the batch is every gathered request's rows concatenated, run with `BucketedJit`
            (several chunks if it exceeds the largest bucket); each future gets exactly its
            rows as numpy arrays. A request of any size is accepted (one larger than
            `max_rows` runs in a batch of its own: no deadlock).
  "device": requests (each at most the largest bucket) are packed into ONE chunk, run with
            `run_chunk`, and each future gets device arrays padded to the request's own bucket
            size (`bucket_size(n)`, the padding rows repeat its last row, as `pad_rows`), i.e.
            what `run_chunk(pad_rows(rows, bucket_size(n)), *args)` returns, without a trip
            through the host. The per-request gather compiles once per (chunk bucket, request
            bucket) pair.

Rows may be one array or a tuple of arrays sharing their leading axis (token ids, masks and
pixels of one prompt per row). Only requests with the same row shapes/dtypes and the same
`args` objects (compared by identity: model state, queries) share a batch. Errors raised by the batch reach every
request in it. `close()` runs what is queued, then stops the worker; later submits raise.
`warm()` compiles `fn` for every bucket size of every row shape seen so far, so that a long
job does not stall on a compilation the first time a batch of a new size forms.

Results are equal to per-request calls up to floating-point reassociation (a row's outputs can
differ in the last bits with the batch it ran in).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import queue
import threading
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experts.batching import BucketedJit, bucket_size, num_rows, pad_rows, plan_chunks

OUTPUTS = ("host", "device")


@dataclasses.dataclass
class _Request:
  rows: Any  # an array, or a tuple of arrays sharing the leading axis
  args: tuple
  key: tuple
  future: concurrent.futures.Future
  arrived: float

  @property
  def n(self) -> int:
    return num_rows(self.rows)


@dataclasses.dataclass
class CoalescerStats:
  """Counters (cumulative): batches run, requests and rows served, padded rows computed, and
  seconds the worker spent running batches (`busy_s`, including waiting on the device)."""

  batches: int = 0
  requests: int = 0
  rows: int = 0
  padded_rows: int = 0
  errors: int = 0
  busy_s: float = 0.0

  @property
  def requests_per_batch(self) -> float:
    return self.requests / self.batches if self.batches else 0.0


_STOP = object()


def _take(tree, idx):
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


_take_jit = jax.jit(_take)


class Coalescer:
  """Dynamic batcher in front of `fn` (a `BucketedJit`).

  Args:
    fn: the bucketed expert; `fn(rows, *args)` must be row-wise (no mixing across rows).
    wait_s: how long the worker waits after the oldest pending request for more to arrive.
    max_rows: rows that trigger a batch at once (default: `fn`'s largest bucket; in "device"
      mode at most that).
    output: "host" or "device" (see the module docstring).
    name: the worker thread's name.

  Example:
    image = Coalescer(BucketedJit(image_side, buckets=(1, 4, 16)), output="host")
    fut = image.submit(frames, state)     # from any thread
    feats = fut.result()                  # (len(frames), ...) numpy
    image.close()
  """

  def __init__(
    self,
    fn: BucketedJit,
    *,
    wait_s: float = 0.002,
    max_rows: int | None = None,
    output: str = "host",
    name: str | None = None,
  ):
    if not isinstance(fn, BucketedJit):
      raise TypeError(f"Coalescer needs a BucketedJit, got {type(fn).__name__}")
    if output not in OUTPUTS:
      raise ValueError(f"Coalescer: output={output!r} not in {OUTPUTS}")
    if wait_s < 0:
      raise ValueError(f"Coalescer: wait_s must be >= 0, got {wait_s}")
    big = fn.buckets[-1]
    max_rows = big if max_rows is None else int(max_rows)
    if max_rows < 1:
      raise ValueError(f"Coalescer: max_rows must be >= 1, got {max_rows}")
    if output == "device":
      max_rows = min(max_rows, big)
    self.fn, self.wait_s, self.max_rows, self.output = fn, float(wait_s), max_rows, output
    self.name = name or f"coalesce:{fn.name}"
    self.stats = CoalescerStats()
    self._queue: queue.Queue = queue.Queue()
    self._seen: dict[tuple, tuple] = {}  # batching key -> (one row, args), for warm()
    self._closed = False
    self._submit_lock = threading.Lock()
    self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
    self._thread.start()

  # -- callers ---------------------------------------------------------------------------------

  def submit(self, rows, *args) -> concurrent.futures.Future:
    """Queues `rows` (numpy, leading axis N; or a tuple of such arrays) with `fn`'s other
    arguments; returns a Future."""
    rows = jax.tree.map(np.asarray, rows)
    if any(np.ndim(a) < 1 for a in jax.tree.leaves(rows)):
      raise ValueError(
        f"{self.name}: rows need a leading axis, got shapes "
        f"{[np.shape(a) for a in jax.tree.leaves(rows)]}"
      )
    n = num_rows(rows)
    if self.output == "device" and n > self.fn.buckets[-1]:
      raise ValueError(
        f"{self.name}: {n} rows exceed the largest bucket "
        f"{self.fn.buckets[-1]} (output='device' takes one chunk per request)"
      )
    future: concurrent.futures.Future = concurrent.futures.Future()
    if n == 0:
      future.set_result(
        self.fn(rows, *args, to_host=True) if self.output == "host" else self.fn(rows, *args)
      )
      return future
    key = (
      jax.tree.structure(rows),
      tuple((a.shape[1:], a.dtype.str) for a in jax.tree.leaves(rows)),
      tuple(id(a) for a in args),
    )
    with self._submit_lock:
      if self._closed:
        raise RuntimeError(f"{self.name} is closed")
      self._queue.put(_Request(rows, args, key, future, time.monotonic()))
      if key not in self._seen:
        self._seen[key] = (jax.tree.map(lambda a: a[:1], rows), args)
    return future

  def warm(self) -> int:
    """Runs `fn` once per bucket size on each row shape submitted so far (a row repeated),
    compiling what a batch of any size will run; returns the number of calls made. In
    "device" mode also compiles the per-request gathers."""
    with self._submit_lock:
      seen = list(self._seen.values())
    calls = 0
    for row, args in seen:
      for size in self.fn.buckets:
        out = self.fn.run_chunk(pad_rows(row, size), *args)
        if self.output == "host":
          jax.tree.map(np.asarray, out)
        else:
          for own in self.fn.buckets:
            if own <= size:
              out_own = _take_jit(out, jnp.zeros((own,), jnp.int32))
              jax.block_until_ready(out_own)
        calls += 1
    return calls

  def __call__(self, rows, *args):
    """`submit(rows, *args).result()`: blocks until the batch holding these rows has run."""
    return self.submit(rows, *args).result()

  def close(self, timeout: float | None = None) -> None:
    """Runs what is queued, then stops the worker (idempotent)."""
    with self._submit_lock:
      if not self._closed:
        self._closed = True
        self._queue.put(_STOP)
    if threading.current_thread() is not self._thread:
      self._thread.join(timeout)

  def __enter__(self) -> "Coalescer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- the worker ------------------------------------------------------------------------------

  def _loop(self) -> None:
    pending: collections.deque[_Request] = collections.deque()
    stopping = False
    while pending or not stopping:
      if not pending:
        item = self._queue.get()
        if item is _STOP:
          stopping = True
          continue
        pending.append(item)
      key = pending[0].key
      deadline = pending[0].arrived + self.wait_s
      while not stopping and sum(r.n for r in pending if r.key == key) < self.max_rows:
        timeout = deadline - time.monotonic()
        try:
          item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
          break
        if item is _STOP:
          stopping = True
        else:
          pending.append(item)
      batch, rest, rows = [], collections.deque(), 0
      for r in pending:
        if r.key == key and (not batch or rows + r.n <= self.max_rows):
          batch.append(r)
          rows += r.n
        else:
          rest.append(r)
      pending = rest
      self._run(batch)

  def _run(self, batch: Sequence[_Request]) -> None:
    live = [r for r in batch if r.future.set_running_or_notify_cancel()]
    if not live:
      return
    t0 = time.perf_counter()
    try:
      if self.output == "host":
        results = self._run_host(live)
      else:
        results = self._run_device(live)
    except BaseException as e:  # every caller in the batch gets the error
      self.stats.errors += 1
      for r in live:
        r.future.set_exception(e)
      return
    finally:
      self.stats.busy_s += time.perf_counter() - t0
    self.stats.batches += 1
    self.stats.requests += len(live)
    self.stats.rows += sum(r.n for r in live)
    for r, out in zip(live, results):
      r.future.set_result(out)

  @staticmethod
  def _concat(batch: Sequence[_Request]):
    if len(batch) == 1:
      return batch[0].rows
    return jax.tree.map(lambda *a: np.concatenate(a), *[r.rows for r in batch])

  def _run_host(self, batch: Sequence[_Request]) -> list[Any]:
    rows = self._concat(batch)
    out = self.fn(rows, *batch[0].args, to_host=True)
    total = sum(r.n for r in batch)
    self.stats.padded_rows += sum(size for _, _, size in plan_chunks(total, self.fn.buckets))
    results, start = [], 0
    for r in batch:
      results.append(jax.tree.map(lambda a, s=start, e=start + r.n: a[s:e], out))
      start += r.n
    return results

  def _run_device(self, batch: Sequence[_Request]) -> list[Any]:
    total = sum(r.n for r in batch)
    size = bucket_size(total, self.fn.buckets)
    rows = self._concat(batch)
    out = self.fn.run_chunk(pad_rows(rows, size), *batch[0].args)
    jax.block_until_ready(out)  # busy_s counts the device's time; callers wait for it anyway
    self.stats.padded_rows += size
    if len(batch) == 1 and batch[0].n == size:
      return [out]
    results, start = [], 0
    for r in batch:
      own = bucket_size(r.n, self.fn.buckets)
      idx = np.minimum(np.arange(own), r.n - 1) + start
      results.append(_take_jit(out, jnp.asarray(idx, jnp.int32)))
      start += r.n
    return results
