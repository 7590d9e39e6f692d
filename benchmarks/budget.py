"""A benchmark's wall time on a lent device, bounded: phases timed, XLA compilations counted per
phase, work that would not fit skipped, and a hard deadline that reports and exits.

A lent accelerator runs a command for at most a fixed time (10 minutes here), and a benchmark at
real sizes spends most of it compiling, which is not known until it has run there. `RunClock`
makes the bound part of the run instead of a hope:

  clock = RunClock(budget_s=500, deadline_s=570)
  clock.start_deadline(partial_report, out_path)  # at 570 s: print + write, exit status 3
  with clock.phase("build"):
    ...
  if clock.fits("timed/on/r0", predicted_s=12.0):  # else recorded in clock.skipped
    with clock.phase("timed/on"):
      ...
  clock.report()  # phase seconds, compilations per phase, skipped work, the limits

`budget_s` is soft: work is started only if it is predicted to end within it, and what is
skipped is listed with its prediction. `deadline_s` is hard: a timer thread writes the report
of what finished (`aborted` names the phase it stopped in) and ends the process with
`DEADLINE_EXIT` however the main thread is stuck (a compilation, a device call). Compilations are
counted by name through jax.monitoring (`jit(<function>)`; cache hits of the persistent
compilation cache are counted as well, since a hit is reported as a compilation too).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from typing import Callable, Iterator

DEADLINE_EXIT = 3  # not 124/137: those read as "killed by the caller's time limit"

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


class RunClock:
  """Wall-clock phases, a soft budget and a hard deadline for one benchmark run (see the module
  docstring). `clock` and `exit` are injectable for tests."""

  def __init__(
    self,
    budget_s: float = 0.0,
    deadline_s: float = 0.0,
    *,
    clock: Callable[[], float] = time.perf_counter,
    exit: Callable[[int], None] = os._exit,
  ):
    if budget_s < 0 or deadline_s < 0:
      raise ValueError(
        f"RunClock: budget_s and deadline_s must be >= 0 (0: none), got {budget_s}, {deadline_s}"
      )
    self.budget_s, self.deadline_s = float(budget_s), float(deadline_s)
    self._clock, self._exit = clock, exit
    self.t0 = clock()
    self.current = "start"
    self.phase_s: dict[str, float] = {}
    self.skipped: list[dict] = []
    # phase -> {"count", "compile_s_summed", "cache_hits", "programs": {fun_name: count}}
    self.compiles: dict[str, dict] = {}
    self._lock = threading.Lock()
    self._timer: threading.Timer | None = None
    self._listening = False

  # -- time ------------------------------------------------------------------------------------

  def elapsed(self) -> float:
    """Seconds since the clock was made."""
    return self._clock() - self.t0

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Times the block into `phase_s[name]` (added up when a phase repeats) and files the XLA
    compilations that happen meanwhile, from any thread, under `name`."""
    outer, t = self.current, self._clock()
    self.current = name
    try:
      yield
    finally:
      self.current = outer
      with self._lock:
        self.phase_s[name] = self.phase_s.get(name, 0.0) + self._clock() - t

  def fits(self, label: str, predicted_s: float | None = 0.0) -> bool:
    """Whether work predicted to take `predicted_s` ends within the budget if started now
    (None: not known, so it does not start under a budget); if not, it is recorded in
    `skipped` (label, prediction, the time it was skipped at)."""
    now = self.elapsed()
    if not self.budget_s or (predicted_s is not None and now + predicted_s <= self.budget_s):
      return True
    with self._lock:
      self.skipped.append(
        {
          "what": label,
          "predicted_s": None if predicted_s is None else round(predicted_s, 1),
          "at_s": round(now, 1),
        }
      )
    return False

  # -- compilations ----------------------------------------------------------------------------

  def _on_duration(self, event: str, duration: float, **kwargs) -> None:
    if event != _COMPILE_EVENT:
      return
    name = str(kwargs.get("fun_name", "?"))
    with self._lock:
      c = self.compiles.setdefault(
        self.current, {"count": 0, "compile_s_summed": 0.0, "cache_hits": 0, "programs": {}}
      )
      c["count"] += 1
      c["compile_s_summed"] += duration
      c["programs"][name] = c["programs"].get(name, 0) + 1

  def _on_event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == _CACHE_HIT_EVENT:
      with self._lock:
        c = self.compiles.setdefault(
          self.current, {"count": 0, "compile_s_summed": 0.0, "cache_hits": 0, "programs": {}}
        )
        c["cache_hits"] += 1

  @contextlib.contextmanager
  def counting_compilations(self) -> Iterator["RunClock"]:
    """Listens to jax.monitoring's compilation events inside the block."""
    import jax

    jax.monitoring.register_event_duration_secs_listener(self._on_duration)
    jax.monitoring.register_event_listener(self._on_event)
    self._listening = True
    try:
      yield self
    finally:
      self._listening = False
      jax.monitoring.unregister_event_duration_listener(self._on_duration)
      jax.monitoring.unregister_event_listener(self._on_event)

  def compiled(self, prefix: str = "") -> tuple[int, float]:
    """(compilations, their seconds summed) over the phases whose name starts with `prefix`."""
    with self._lock:
      rows = [c for k, c in self.compiles.items() if k.startswith(prefix)]
    return sum(c["count"] for c in rows), sum(c["compile_s_summed"] for c in rows)

  # -- the report and the deadline -------------------------------------------------------------

  def report(self) -> dict:
    """Phase seconds, compilations per phase (programs by name), skipped work, the limits."""
    with self._lock:
      compiles = {
        k: dict(c, compile_s_summed=round(c["compile_s_summed"], 1), programs=dict(c["programs"]))
        for k, c in self.compiles.items()
      }
      phases = {k: round(v, 1) for k, v in self.phase_s.items()}
      skipped = list(self.skipped)
    return {
      "phase_s": phases,
      "xla_compilations_by_phase": compiles,
      "skipped": skipped,
      "time_budget_s": self.budget_s,
      "deadline_s": self.deadline_s,
      "elapsed_s": round(self.elapsed(), 1),
    }

  def start_deadline(self, partial: Callable[[], dict], out: str = "") -> None:
    """At `deadline_s` (none if 0): prints `partial()` with this clock's report and `aborted`
    (the phase running, the time), writes it to `out`, and ends the process (`exit`)."""
    if not self.deadline_s:
      return
    left = max(self.deadline_s - self.elapsed(), 0.0)
    self._timer = threading.Timer(left, self._fire, args=(partial, out))
    self._timer.daemon = True
    self._timer.start()

  def cancel_deadline(self) -> None:
    """Stops the deadline's timer (the run finished in time)."""
    if self._timer is not None:
      self._timer.cancel()

  def _fire(self, partial: Callable[[], dict], out: str) -> None:
    aborted = {"phase": self.current, "at_s": round(self.elapsed(), 1)}
    try:
      result = dict(partial())
    except Exception as e:  # the main thread was mid-update: report what is certain
      result = {"partial_report_error": repr(e)}
    result.update(self.report(), aborted=aborted)
    text = json.dumps(result, indent=1, default=str)
    print(text, flush=True)
    print(
      f"deadline: {self.deadline_s:.0f} s reached in phase {aborted['phase']!r}; exiting with "
      f"status {DEADLINE_EXIT}",
      file=sys.stderr,
      flush=True,
    )
    if out:
      with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    self._exit(DEADLINE_EXIT)
