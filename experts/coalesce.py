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
pixels of one prompt per row). Numpy rows are batched on the host; device arrays (`jax.Array`,
e.g. a prompt prefix's KV cache kept on the device) stay there, as the requests' own arrays
(`experts.batching.RowParts`), joined inside the jitted function.
Only requests with the same row shapes/dtypes and the same `args` objects (compared by
identity: model state, queries) share a batch. Errors raised by the batch reach every request
in it. `close()` runs what is queued, then stops the worker; later submits raise.
`warm()` compiles `fn` for every bucket size of every row shape seen so far, so that a long
job does not stall on a compilation the first time a batch of a new size forms.

With `scheduler=` (an `experts.scheduler.DeviceScheduler`) the coalescer has no thread of
its own: the device's scheduler runs the batches of all its coalescers one at a time, and
releases one when every program in flight is blocked on an expert call (or the queue is full,
or the window has passed), picking the cheapest queue.

Results are equal to per-request calls up to floating-point reassociation (a row's outputs can
differ in the last bits with the batch it ran in).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from experts.batching import (
  BucketedJit,
  RowParts,
  bucket_size,
  num_rows,
  pad_rows,
  plan_chunks,
)

if TYPE_CHECKING:
  from experts.scheduler import DeviceScheduler

OUTPUTS = ("host", "device")


@dataclasses.dataclass
class _Request:
  rows: Any  # an array, or a tuple of arrays sharing the leading axis
  n: int  # rows' leading size, counted once: the scheduler reads it at every pick
  args: tuple
  key: tuple
  future: concurrent.futures.Future
  arrived: float


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


def _take(tree, idx):
  return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


_take_jit = jax.jit(_take)


def _concatenate(*parts):
  """Requests' rows of one leaf along axis 0: numpy joined on the host; device arrays kept as
  `RowParts`, joined inside the jitted function (one fused copy, not an eager one first)."""
  if isinstance(parts[0], jax.Array):
    return RowParts(parts)
  return np.concatenate(parts)


class Coalescer:
  """Dynamic batcher in front of `fn` (a `BucketedJit`).

  Args:
    fn: the bucketed expert; `fn(rows, *args)` must be row-wise (no mixing across rows).
    wait_s: how long the worker waits after the oldest pending request for more to arrive.
    max_rows: rows that trigger a batch at once (default: `fn`'s largest bucket; in "device"
      mode at most that).
    output: "host" or "device" (see the module docstring).
    name: the worker thread's name.
    scheduler: the device's `experts.scheduler.DeviceScheduler`, which then runs the batches
      (no thread of this coalescer's own).

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
    scheduler: DeviceScheduler | None = None,
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
    self.scheduler = scheduler
    # the queue: guarded by the scheduler's condition when there is one, else by our own
    self._cond = scheduler.cond if scheduler is not None else threading.Condition()
    self._pending: collections.deque[_Request] = collections.deque()
    self._seen: dict[tuple, tuple] = {}  # batching key -> (first request's rows, args)
    self._closed = False
    self._running = 0  # batches of ours running (scheduler mode)
    self._thread = None
    if scheduler is not None:
      scheduler.attach(self)
    else:
      self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
      self._thread.start()

  # -- callers ---------------------------------------------------------------------------------

  def submit(self, rows, *args) -> concurrent.futures.Future:
    """Queues `rows` (numpy, leading axis N; or a tuple of such arrays) with `fn`'s other
    arguments; returns a Future."""
    rows = jax.tree.map(lambda a: a if isinstance(a, jax.Array) else np.asarray(a), rows)
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
    with self._cond:
      if self._closed:
        raise RuntimeError(f"{self.name} is closed")
      self._pending.append(_Request(rows, n, args, key, future, time.monotonic()))
      if key not in self._seen:
        self._seen[key] = (rows, args)
      self._cond.notify_all()
    return future

  def wait(self, future: concurrent.futures.Future):
    """`future.result()`; under a scheduler the caller counts as blocked on an expert call
    meanwhile (see `experts.scheduler`)."""
    if self.scheduler is not None:
      return self.scheduler.wait(future)
    return future.result()

  def warm(self) -> int:
    """Runs `fn` once per bucket size on each row shape submitted so far (a row repeated),
    compiling what a batch of any size will run; returns the number of calls made. In
    "device" mode also compiles the per-request gathers."""
    with self._cond:
      seen = list(self._seen.values())
    calls = 0
    for rows, args in seen:
      # one row (a device array of one row as it is: slicing it would copy it)
      row = jax.tree.map(lambda a: a if a.shape[0] == 1 else a[:1], rows)
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

  def samples(self) -> list[tuple]:
    """(rows, args) of the first request of each row shape seen so far."""
    with self._cond:
      return list(self._seen.values())

  def __call__(self, rows, *args):
    """`wait(submit(rows, *args))`: blocks until the batch holding these rows has run."""
    return self.wait(self.submit(rows, *args))

  def close(self, timeout: float | None = None) -> None:
    """Runs what is queued, then stops the worker (idempotent); under a scheduler, waits for
    it to run this coalescer's queue, then detaches."""
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    if self.scheduler is None:
      if threading.current_thread() is not self._thread:
        self._thread.join(timeout)
      return
    deadline = None if timeout is None else time.monotonic() + timeout
    with self._cond:
      while self._pending or self._running:
        left = None if deadline is None else deadline - time.monotonic()
        if (left is not None and left <= 0) or not self.scheduler._thread.is_alive():
          break
        self._cond.wait(left)
    self.scheduler.detach(self)

  def __enter__(self) -> "Coalescer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -- the worker ------------------------------------------------------------------------------

  def _candidate(self, any_key: bool = False) -> tuple[int, int, float, tuple]:
    """(requests, rows, arrival of its first request, key) of the batch `_take_batch(key)`
    would form now: the first request's key, or with `any_key` the key with the most requests
    (ties: the oldest). The lock is held and the queue is not empty."""
    groups: dict[tuple, list] = {}  # key -> [requests, rows, first arrival]
    for r in self._pending:
      g = groups.setdefault(r.key, [0, 0, r.arrived])
      if not g[0] or g[1] + r.n <= self.max_rows:
        g[0], g[1] = g[0] + 1, g[1] + r.n
    key = self._pending[0].key
    if any_key:
      key = max(groups, key=lambda k: (groups[k][0], -groups[k][2]))
    n, rows, arrived = groups[key]
    return n, rows, arrived, key

  def _take_batch(self, key: tuple) -> list[_Request]:
    """Removes and returns the next batch of `key`: its requests in order, up to `max_rows`
    rows (at least one request). The lock is held."""
    batch, rest, rows = [], collections.deque(), 0
    for r in self._pending:
      if r.key == key and (not batch or rows + r.n <= self.max_rows):
        batch.append(r)
        rows += r.n
      else:
        rest.append(r)
    self._pending = rest
    return batch

  def _loop(self) -> None:
    """The own worker (no scheduler): a batch when `max_rows` rows of the first request's
    shape wait, or `wait_s` after it arrived."""
    while True:
      with self._cond:
        while not self._pending and not self._closed:
          self._cond.wait()
        if not self._pending:
          return
        while not self._closed and self._candidate()[1] < self.max_rows:
          timeout = self._pending[0].arrived + self.wait_s - time.monotonic()
          if timeout <= 0:
            break
          self._cond.wait(timeout)
        batch = self._take_batch(self._pending[0].key)
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
      self._count(errors=1)
      for r in live:
        r.future.set_exception(e)
      return
    finally:
      self._count(busy_s=time.perf_counter() - t0)
    self._count(batches=1, requests=len(live), rows=sum(r.n for r in live))
    for r, out in zip(live, results):
      r.future.set_result(out)

  def _count(self, **add) -> None:
    """Adds to `stats` under the queue's lock (a scheduler's workers may run two batches of
    one coalescer at once)."""
    with self._cond:
      for name, value in add.items():
        setattr(self.stats, name, getattr(self.stats, name) + value)

  @staticmethod
  def _concat(batch: Sequence[_Request]):
    if len(batch) == 1:
      return batch[0].rows
    return jax.tree.map(_concatenate, *[r.rows for r in batch])

  def _run_host(self, batch: Sequence[_Request]) -> list[Any]:
    rows = self._concat(batch)
    out = self.fn(rows, *batch[0].args, to_host=True)
    total = sum(r.n for r in batch)
    self._count(padded_rows=sum(size for _, _, size in plan_chunks(total, self.fn.buckets)))
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
    self._count(padded_rows=size)
    if len(batch) == 1 and batch[0].n == size:
      return [out]
    results, start = [], 0
    for r in batch:
      own = bucket_size(r.n, self.fn.buckets)
      idx = np.minimum(np.arange(own), r.n - 1) + start
      results.append(_take_jit(out, jnp.asarray(idx, jnp.int32)))
      start += r.n
    return results
