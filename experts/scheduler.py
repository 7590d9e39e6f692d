"""One device, one batch at a time: a scheduler shared by every coalescer of a device.

Each `experts.coalesce.Coalescer` on its own has a worker thread with a wait window: with
several experts (OWLv2, UniVTG's three parts, LLaVA) up to five batches run at once on one
device, and a CoT job's programs spread over the experts' queues, so each batch holds the few
programs that happened to reach that expert within the window.

`DeviceScheduler` is the one worker thread of all the coalescers attached to it
(`Coalescer(fn, scheduler=s)`). It knows how many programs are in flight (`program()`: the job
or benchmark enters it around each program) and how many of them are blocked on an expert
call (`wait`, which `Coalescer.__call__` uses), and runs a batch when no more requests can come soon:

  quiescent: every program in flight is blocked on an expert call (a program running Python,
             a host-side tool or the sandbox counts as running), so waiting longer gains
             nothing;
  full:      a queue holds a full batch (`max_rows` rows of one shape);
  window:    the oldest waiting request has waited its queue's window since it arrived or
             since the last batch ended, whichever is later: the coalescer's `wait_s`, or
             `window_cost` (default 0.5) times the queue's recent batch seconds when that is
             longer (the programs that batch released get the window to reach their next
             call; a program busy elsewhere for long does not hold up the others).

It then runs the cheapest queue: the one whose recent batches took the least time (the median
of its last 8; a queue not run yet counts as free), ties to the most requests, then the oldest.
A CoT program calls cheap expert parts (frame features, text features, a detector head)
before an expensive one (LLaVA's generation, ~100 decode steps): running the cheap queues first
moves the programs still behind on to the expensive queue, whose one batch then holds most of
the programs in flight, where running the fullest queue first sent it the few programs that
had arrived (on the CPU benchmark generation batches held 3-4 of 16 programs' requests that
way, 5-8 this way; docs/experts.md). The longer window of an expensive queue does the same for
programs still running Python: a batch of LLaVA's generation waits up to half its own time for
them before running without them, a detector batch 2 ms. With two workers, quiescence while a
batch runs starts only a queue no more expensive than that batch (its programs come back soon,
and an expensive batch started now would leave them out). A queue passed over `patience` times
in a row goes first (the fullest of such queues), so a program stuck behind cheap calls that
keep coming is still served. `order="fullest"` runs the fullest queue first (the earlier
policy, kept for comparison: `benchmarks/cot_throughput.py --scheduler_order`). Without
`program()` registrations only the full and window rules apply.

  sched = DeviceScheduler()
  image = Coalescer(BucketedJit(image_side), scheduler=sched)
  text = Coalescer(BucketedJit(text_side), scheduler=sched)
  with sched.program():       # in each program's thread
    feats = image(frames, state)
  sched.close()

`workers=N` lets N batches run at once, each worker picking by the same rules: on a CPU at
small sizes one batch leaves cores idle, and 2 workers let two experts' batches overlap (the
registry's `scheduler_workers`, 0 = auto: 2 on a CPU, 1 on an accelerator).

A batch's results are the same whichever rule released it, and however many workers ran
(`Coalescer`'s row-wise functions).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import statistics
import threading
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
  from experts.coalesce import Coalescer

ORDERS = ("cheapest", "fullest")


@dataclasses.dataclass
class SchedulerStats:
  """Counters (cumulative): batches run, by the rule that released them, and the seconds the
  worker spent running batches."""

  batches: int = 0
  quiescent: int = 0
  full: int = 0
  window: int = 0
  closing: int = 0
  busy_s: float = 0.0


class DeviceScheduler:
  """The worker thread of the coalescers of one device (see the module docstring).

  Args:
    patience: dispatches a non-empty queue may be passed over before it goes first.
    name: the worker thread's name.
    history: how many of the last batches `history` keeps, as (coalescer name, requests,
      rule) tuples.
    workers: batches that may run at once (default 1: an accelerator runs one at a time; on
      a CPU, where one small batch leaves cores idle, 2 lets two experts' batches overlap).
      Each worker picks by the same rules; the results do not depend on it.
    order: which released queue runs: "cheapest" (the least recent batch seconds) or
      "fullest" (the most requests).
    window_cost: a queue's window is at least this times its recent batch seconds (0: each
      coalescer's `wait_s` only).
  """

  def __init__(
    self,
    *,
    patience: int = 8,
    name: str = "device-scheduler",
    history: int = 256,
    workers: int = 1,
    order: str = "cheapest",
    window_cost: float = 0.5,
  ):
    if patience < 1:
      raise ValueError(f"DeviceScheduler: patience must be >= 1, got {patience}")
    if workers < 1:
      raise ValueError(f"DeviceScheduler: workers must be >= 1, got {workers}")
    if order not in ORDERS:
      raise ValueError(f"DeviceScheduler: order={order!r} not in {ORDERS}")
    if window_cost < 0:
      raise ValueError(f"DeviceScheduler: window_cost must be >= 0, got {window_cost}")
    self.patience, self.name = int(patience), name
    self.order, self.window_cost = order, float(window_cost)
    self._costs: dict[int, collections.deque] = {}  # id(coalescer) -> recent batch seconds
    self._running_now: list[Coalescer] = []  # the coalescers of the batches running now
    self.stats = SchedulerStats()
    self.history: collections.deque[tuple[str, int, str]] = collections.deque(maxlen=history)
    self.cond = threading.Condition()  # guards everything below and the coalescers' queues
    self._coalescers: list[Coalescer] = []
    self._passed: dict[int, int] = {}  # id(coalescer) -> dispatches passed over
    self._programs = 0
    self._blocked = 0
    self._closed = False
    self._last_end = 0.0  # time.monotonic() when the last batch ended
    self._threads = [
      threading.Thread(target=self._loop, name=f"{name}/{i}", daemon=True) for i in range(workers)
    ]
    self._thread = self._threads[0]  # the first worker (alive while the scheduler runs)
    for thread in self._threads:
      thread.start()

  # -- what coalescers and programs call ---------------------------------------------------------

  def attach(self, coalescer: "Coalescer") -> None:
    with self.cond:
      if self._closed:
        raise RuntimeError(f"{self.name} is closed")
      self._coalescers.append(coalescer)
      self._passed[id(coalescer)] = 0
      self._costs[id(coalescer)] = collections.deque(maxlen=8)

  def detach(self, coalescer: "Coalescer") -> None:
    with self.cond:
      if coalescer in self._coalescers:
        self._coalescers.remove(coalescer)
        self._passed.pop(id(coalescer), None)
        self._costs.pop(id(coalescer), None)

  @contextlib.contextmanager
  def program(self) -> Iterator[None]:
    """Counts the calling program as in flight while the block runs."""
    with self.cond:
      self._programs += 1
    try:
      yield
    finally:
      with self.cond:
        self._programs -= 1
        self.cond.notify_all()  # one fewer to wait for: the others may be quiescent now

  def wait(self, future: concurrent.futures.Future):
    """`future.result()`, the calling thread counted as blocked on an expert call until the
    result is set (by the worker, before it picks the next batch: a program whose result is
    in counts as running at once, even before its thread wakes up)."""
    with self.cond:
      if not future.done():
        self._blocked += 1
        self.cond.notify_all()
        future.add_done_callback(self._unblock)
    return future.result()

  def _unblock(self, _future) -> None:
    with self.cond:
      self._blocked -= 1

  @property
  def programs(self) -> int:
    """Programs in flight now."""
    return self._programs

  def close(self, timeout: float | None = None) -> None:
    """Runs what is queued, then stops the worker (idempotent); coalescers attached later, or
    still attached, can no longer submit."""
    with self.cond:
      self._closed = True
      for c in self._coalescers:
        c._closed = True  # noqa: SLF001 - the scheduler owns its coalescers' queues
      self.cond.notify_all()
    for thread in self._threads:
      if threading.current_thread() is not thread:
        thread.join(timeout)

  def __enter__(self) -> "DeviceScheduler":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def batch_seconds(self, coalescer: "Coalescer") -> float:
    """The median seconds of `coalescer`'s last 8 batches (0.0 before its first): what the
    `cheapest` order and the window compare (a compilation inflates one batch, not the
    median)."""
    recent = self._costs.get(id(coalescer))
    return statistics.median(recent) if recent else 0.0

  # -- the worker --------------------------------------------------------------------------------

  def _pick(self, now: float):
    """((coalescer, batching key), rule) to run now, or (None, seconds to wait: None = until
    notified)."""
    # each queue's fullest batch: (requests, rows, first arrival, key)
    heads = [(c, c._candidate(any_key=True)) for c in self._coalescers if c._pending]  # noqa: SLF001
    if not heads:
      return None, None
    closing = heads if self._closed else [h for h in heads if h[0]._closed]  # noqa: SLF001
    full = [h for h in heads if h[1][1] >= h[0].max_rows]
    quiescent = self._programs > 0 and self._blocked >= self._programs
    if quiescent and self._running_now:
      # programs in a running batch come back soon: start only what costs no more than it
      longest = max(self.batch_seconds(c) for c in self._running_now)
      soon = [h for h in heads if self.batch_seconds(h[0]) <= longest]
      quiescent, heads_q = bool(soon), soon
    else:
      heads_q = heads
    # when each queue's window ends
    due = [
      max(h[2], self._last_end) + max(c.wait_s, self.window_cost * self.batch_seconds(c))
      for c, h in heads
    ]
    if closing:
      rule, heads = "closing", closing
    elif quiescent:
      rule, heads = "quiescent", heads_q
    elif full:
      rule, heads = "full", full
    elif now >= min(due):
      rule, heads = "window", [h for h, d in zip(heads, due) if now >= d]
    else:
      return None, min(due) - now
    late = [h for h in heads if self._passed[id(h[0])] >= self.patience]
    if self.order == "cheapest" and not late:
      cheapest = lambda h: (self.batch_seconds(h[0]), -h[1][0], h[1][2])  # noqa: E731
      chosen, (_, _, _, key) = min(heads, key=cheapest)
    else:
      # the fullest queue (most requests), ties to the oldest request
      chosen, (_, _, _, key) = max(late or heads, key=lambda h: (h[1][0], -h[1][2]))
    for c, _ in heads:
      self._passed[id(c)] = 0 if c is chosen else self._passed[id(c)] + 1
    return (chosen, key), rule

  def _loop(self) -> None:
    while True:
      with self.cond:
        while True:
          pick, rule = self._pick(time.monotonic())
          if pick is not None:
            chosen, key = pick
            batch = chosen._take_batch(key)  # noqa: SLF001
            break
          if self._closed and not any(c._pending for c in self._coalescers):  # noqa: SLF001
            self.cond.notify_all()
            return
          self.cond.wait(rule)
        chosen._running += 1  # noqa: SLF001 - batches of it running now
        self._running_now.append(chosen)
      t0 = time.perf_counter()
      try:
        chosen._run(batch)  # noqa: SLF001 - outside the lock: programs keep submitting
      finally:
        with self.cond:
          chosen._running -= 1  # noqa: SLF001
          self._running_now.remove(chosen)
          if id(chosen) in self._costs:
            self._costs[id(chosen)].append(time.perf_counter() - t0)
          self._last_end = time.monotonic()
          self.history.append((chosen.name, len(batch), rule))
          self.stats.batches += 1
          setattr(self.stats, rule, getattr(self.stats, rule) + 1)
          self.stats.busy_s += time.perf_counter() - t0
          self.cond.notify_all()  # coalescers closing wait for their queue to drain
