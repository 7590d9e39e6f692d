"""An ordered pipeline of stages, one thread each: item k+1 enters a stage while item k is in the next.

`run_stages(items, [("program", f), ("execute", g), ...], max_in_flight=4)` yields
`...g(f(item))` for every item, in the items' order, as each comes out of the last stage.
Each stage is a thread that takes its items in order, so a stage sees the same sequence of
inputs (and makes the same calls) as a plain loop would: only the overlap between stages
differs. At most `max_in_flight` items are between the input and the consumer at once (the
input iterator is not advanced further), which bounds the memory of work in progress (decoded
video clips, say).

A stage that raises hands the exception down the pipeline in its item's place; the consumer
gets it (re-raised) when that item's turn comes, after every earlier item, as a plain loop
would raise it. When the consumer stops early (an exception, `close()`), every stage finishes
its current item and the threads are joined before the generator returns.
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

  def add(self, name: str, seconds: float) -> None:
    self.busy_s[name] = self.busy_s.get(name, 0.0) + seconds
    self.items[name] = self.items.get(name, 0) + 1


def run_stages(items: Iterable[Any], stages: Sequence[tuple[str, Callable[[Any], Any]]], *,
               max_in_flight: int = 4, times: StageTimes | None = None) -> Iterator[Any]:
  """Runs every item through `stages` (name, function) in order, each stage in its own thread.

  Args:
    items: the inputs; iterated in a feeder thread, at most `max_in_flight` ahead of the consumer.
    stages: (name, function) pairs; each function takes the previous stage's output.
    max_in_flight: items between the input and the consumer at once (>= 1).
    times: when given, each stage's busy seconds are added to it.

  Yields:
    The last stage's output for each item, in the items' order.

  Raises:
    ValueError: no stages, or `max_in_flight` < 1.
    Any exception a stage (or the input iterator) raised, when its item's turn comes.
  """
  if not stages:
    raise ValueError("run_stages needs at least one stage")
  if max_in_flight < 1:
    raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
  queues = [queue.Queue() for _ in range(len(stages) + 1)]
  slots = threading.Semaphore(max_in_flight)
  cancel = threading.Event()

  def feed() -> None:
    iterator = iter(items)
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
          queues[0].put(_Failed(e))
          return
        queues[0].put(item)
    finally:
      queues[0].put(_END)

  def stage(index: int, name: str, fn: Callable[[Any], Any]) -> None:
    inbox, outbox = queues[index], queues[index + 1]
    while True:
      item = inbox.get()
      if item is _END:
        outbox.put(_END)
        return
      if cancel.is_set() or isinstance(item, _Failed):
        outbox.put(item)
        continue
      t0 = time.perf_counter()
      try:
        out = fn(item)
      except BaseException as e:  # noqa: BLE001 - handed to the consumer in the item's place
        out = _Failed(e)
      if times is not None:
        times.add(name, time.perf_counter() - t0)
      outbox.put(out)

  threads = [threading.Thread(target=feed, name="stages-feed", daemon=True)]
  threads += [threading.Thread(target=stage, args=(i, name, fn), name=f"stages-{name}",
                               daemon=True) for i, (name, fn) in enumerate(stages)]
  for t in threads:
    t.start()
  ended = False
  try:
    while True:
      out = queues[-1].get()
      if out is _END:
        ended = True
        return
      slots.release()
      if isinstance(out, _Failed):
        raise out.error
      yield out
  finally:
    cancel.set()
    while not ended and queues[-1].get() is not _END:  # the stages finish their current items
      pass
    for t in threads:
      t.join()
