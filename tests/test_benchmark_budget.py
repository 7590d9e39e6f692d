"""benchmarks/budget.py: a benchmark's phases, soft budget, hard deadline and compile counts."""

import json
import threading

import jax
import jax.numpy as jnp
import pytest

from benchmarks.budget import DEADLINE_EXIT, RunClock


class FakeClock:
  def __init__(self):
    self.t = 100.0

  def __call__(self) -> float:
    return self.t


def test_fits_skips_work_predicted_past_the_budget_and_says_so():
  t = FakeClock()
  clock = RunClock(budget_s=10.0, clock=t)
  t.t += 3.0
  assert clock.fits("warmup")
  assert clock.fits("timed/on/r0", predicted_s=7.0)  # ends at 10: in
  assert not clock.fits("timed/off/r0", predicted_s=7.5)
  t.t += 8.0
  assert not clock.fits("batch_cost")  # past the budget: nothing starts
  assert clock.skipped == [
    {"what": "timed/off/r0", "predicted_s": 7.5, "at_s": 3.0},
    {"what": "batch_cost", "predicted_s": 0.0, "at_s": 11.0},
  ]
  assert clock.report()["skipped"] == clock.skipped


def test_no_budget_starts_everything():
  clock = RunClock(budget_s=0.0)
  assert clock.fits("timed/on/r0", predicted_s=1e9) and not clock.skipped


def test_negative_limits_are_refused():
  with pytest.raises(ValueError, match="budget_s and deadline_s must be >= 0"):
    RunClock(budget_s=-1.0)


def test_phases_add_up_and_nest():
  t = FakeClock()
  clock = RunClock(clock=t)
  with clock.phase("timed/on"):
    t.t += 2.0
    with clock.phase("inner"):
      assert clock.current == "inner"
      t.t += 1.0
    assert clock.current == "timed/on"
  with clock.phase("timed/on"):  # a second round of the same mode
    t.t += 0.5
  assert clock.current == "start"
  assert clock.phase_s == {"inner": 1.0, "timed/on": 3.5}


def test_compilations_are_filed_under_the_running_phase_by_name():
  clock = RunClock()

  def budget_probe_program(x):
    return x * 3 + 1

  with clock.counting_compilations():
    with clock.phase("warmup/a"):
      jax.jit(budget_probe_program)(jnp.arange(5.0)).block_until_ready()
    with clock.phase("timed/on"):
      jax.jit(budget_probe_program)(jnp.arange(5.0)).block_until_ready()  # cached: none
  jax.jit(budget_probe_program)(jnp.arange(7.0)).block_until_ready()  # not listening
  warm = clock.compiles["warmup/a"]
  assert warm["programs"].get("jit(budget_probe_program)") == 1
  assert clock.compiled("timed") == (0, 0.0)
  n, secs = clock.compiled("warmup")
  assert n == warm["count"] >= 1 and secs > 0


def test_deadline_reports_what_finished_and_exits(tmp_path):
  exited = threading.Event()
  codes = []

  def fake_exit(code):
    codes.append(code)
    exited.set()

  clock = RunClock(deadline_s=0.05, exit=fake_exit)
  out = tmp_path / "partial.json"
  with clock.phase("build"):
    pass
  with clock.phase("warmup/first_pass"):
    clock.start_deadline(lambda: {"preset": "gpu", "questions_per_s": {"on": 1.5}}, str(out))
    assert exited.wait(10.0), "the deadline never fired"
  assert codes == [DEADLINE_EXIT]
  report = json.loads(out.read_text())
  assert report["aborted"]["phase"] == "warmup/first_pass"
  assert report["aborted"]["at_s"] >= 0.05
  assert report["questions_per_s"] == {"on": 1.5}
  assert "build" in report["phase_s"] and report["deadline_s"] == 0.05


def test_a_cancelled_deadline_does_not_fire():
  codes = []
  clock = RunClock(deadline_s=0.2, exit=codes.append)
  clock.start_deadline(dict)
  clock.cancel_deadline()
  clock._timer.join(1.0)
  assert codes == []


def test_work_of_unknown_length_does_not_start_under_a_budget():
  t = FakeClock()
  clock = RunClock(budget_s=10.0, clock=t)
  assert not clock.fits("timed/on/r0", predicted_s=None)
  assert clock.skipped == [{"what": "timed/on/r0", "predicted_s": None, "at_s": 0.0}]
  assert RunClock().fits("timed/on/r0", predicted_s=None)  # no budget: it starts
