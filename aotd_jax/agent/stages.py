"""An ordered pipeline of stages, each with its own threads: item k+1 enters a stage while item
k is in the next.

`run_stages(items, [("program", f), ("execute", g), ...], max_in_flight=4)` yields
`...g(f(item))` for every item, in the items' order, as each comes out of the last stage.
A stage of one worker (the default) is a thread that takes its items in order, so it sees the
same sequence of inputs (and makes the same calls) as a plain loop would: only the overlap
between stages differs. A stage given several workers, `("program", f, 2)`, runs that many
items at once (its function must allow it) and hands them on in order. At most
`max_in_flight` items are between the input and the consumer at once (the input iterator is
not advanced further), which bounds the memory of work in progress (decoded video clips, say).

A stage that raises hands the exception down the pipeline in its item's place; the consumer
gets it (re-raised) when that item's turn comes, after every earlier item, as a plain loop
would raise it. When the consumer stops early (an exception, `close()`), every stage finishes
its current items and the threads are joined before the generator returns.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

_END = object()


class _Failed:
  """An item whose stage raised: carries the exception to the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


@dataclasses.dataclass
class StageTimes:
  """Busy seconds and items per stage (what the stage's function took, not its waits)."""

  busy_s: dict[str, float] = dataclasses.field(default_factory=dict)
  items: dict[str, int] = dataclasses.field(default_factory=dict)
  _lock: threading.Lock = dataclasses.field(
    default_factory=threading.Lock, repr=False, compare=False
  )

  def add(self, name: str, seconds: float) -> None:
    with self._lock:  # a stage's workers add at once
      self.busy_s[name] = self.busy_s.get(name, 0.0) + seconds
      self.items[name] = self.items.get(name, 0) + 1


class _InOrder:
  """Puts (seq, item) results of a stage's workers into `outbox` in seq order; `_END` once
  all `workers` have ended."""

  def __init__(self, outbox: queue.Queue, workers: int):
    self.outbox, self.left = outbox, workers
    self._next, self._pending = 0, {}
    self._lock = threading.Lock()

  def put(self, seq: int, item: Any) -> None:
    with self._lock:
      self._pending[seq] = item
      while self._next in self._pending:
        self.outbox.put((self._next, self._pending.pop(self._next)))
        self._next += 1

  def worker_ended(self) -> None:
    with self._lock:
      self.left -= 1
      if not self.left:  # every item before _END was taken, so all were put above
        self.outbox.put(_END)


def _parse(stage: tuple) -> tuple[str, Callable[[Any], Any], int]:
  name, fn, *rest = stage
  workers = int(rest[0]) if rest else 1
  if workers < 1:
    raise ValueError(f"stage {name!r}: workers must be >= 1, got {workers}")
  return name, fn, workers


def run_stages(
  items: Iterable[Any],
  stages: Sequence[tuple],
  *,
  max_in_flight: int = 4,
  times: StageTimes | None = None,
) -> Iterator[Any]:
  """Runs every item through `stages` in order, each stage in its own thread(s).

  Args:
    items: the inputs; iterated in a feeder thread, at most `max_in_flight` ahead of the consumer.
    stages: (name, function) or (name, function, workers) tuples; each function takes the
      previous stage's output; `workers` (default 1) items of the stage run at once.
    max_in_flight: items between the input and the consumer at once (>= 1).
    times: when given, each stage's busy seconds are added to it.

  Yields:
    The last stage's output for each item, in the items' order.

  Raises:
    ValueError: no stages, `max_in_flight` < 1 or a stage's workers < 1.
    Any exception a stage (or the input iterator) raised, when its item's turn comes.
  """
  if not stages:
    raise ValueError("run_stages needs at least one stage")
  if max_in_flight < 1:
    raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
  parsed = [_parse(s) for s in stages]
  queues = [queue.Queue() for _ in range(len(parsed) + 1)]
  slots = threading.Semaphore(max_in_flight)
  cancel = threading.Event()

  def feed() -> None:
    iterator = iter(items)
    seq = 0
    try:
      while not cancel.is_set():
        while not slots.acquire(timeout=0.05):
          if cancel.is_set():
            return
        try:
          item = next(iterator)
        except StopIteration:
          return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
          queues[0].put((seq, _Failed(e)))
          return
        queues[0].put((seq, item))
        seq += 1
    finally:
      queues[0].put(_END)

  def work(inbox: queue.Queue, out: _InOrder, name: str, fn: Callable[[Any], Any]) -> None:
    while True:
      got = inbox.get()
      if got is _END:
        inbox.put(_END)  # for the stage's other workers
        out.worker_ended()
        return
      seq, item = got
      if not (cancel.is_set() or isinstance(item, _Failed)):
        t0 = time.perf_counter()
        try:
          item = fn(item)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer in the item's place
          item = _Failed(e)
        if times is not None:
          times.add(name, time.perf_counter() - t0)
      out.put(seq, item)

  threads = [threading.Thread(target=feed, name="stages-feed", daemon=True)]
  for i, (name, fn, workers) in enumerate(parsed):
    out = _InOrder(queues[i + 1], workers)
    threads += [
      threading.Thread(
        target=work, args=(queues[i], out, name, fn), name=f"stages-{name}-{w}", daemon=True
      )
      for w in range(workers)
    ]
  for t in threads:
    t.start()
  ended = False
  try:
    while True:
      got = queues[-1].get()
      if got is _END:
        ended = True
        return
      slots.release()
      _, out = got
      if isinstance(out, _Failed):
        raise out.error
      yield out
  finally:
    cancel.set()
    while not ended and queues[-1].get() is not _END:  # the stages finish their current items
      pass
    for t in threads:
      t.join()
