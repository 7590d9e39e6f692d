"""One device scheduler for many coalescers (experts/scheduler.py): a batch when every program
in flight is blocked on an expert call, the window otherwise, the cheapest queue first; results
equal to unbatched calls. Counts, not timings (the experts that sleep set the batches' cost)."""

import concurrent.futures
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from experts.batching import BucketedJit
from experts.coalesce import Coalescer
from experts.scheduler import DeviceScheduler

BUCKETS = (1, 2, 4, 8)
W = jnp.arange(12.0).reshape(3, 4) / 10


def _fn(scale=1.0):
  return BucketedJit(lambda x, w: jnp.tanh(x @ w) * scale, buckets=BUCKETS)


def _want(x, scale=1.0):
  return np.tanh(x @ np.asarray(W)) * scale


def _programs(sched, bodies, timeout=60):
  """Runs each body in its own thread as a program in flight; all are registered before any
  body starts (so quiescence means: all of them blocked)."""
  barrier = threading.Barrier(len(bodies))

  def run(body):
    with sched.program():
      barrier.wait(timeout)
      return body()

  with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
    futures = [pool.submit(run, b) for b in bodies]
    return [f.result(timeout) for f in futures]


def test_quiescence_releases_one_batch_of_every_program_without_the_window():
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (1, 2, 1, 3, 1, 2)]
  with DeviceScheduler() as sched:
    co = Coalescer(_fn(), wait_s=600.0, max_rows=32, scheduler=sched)  # no window, not full
    outs = _programs(sched, [lambda x=x: co(x, W) for x in xs])
    assert co._thread is None  # no worker of its own
  for x, out in zip(xs, outs):
    np.testing.assert_allclose(out, _want(x), rtol=1e-5, atol=1e-6)
  assert list(sched.history) == [(co.name, 6, "quiescent")]
  assert co.stats.batches == 1 and co.stats.rows == 10
  assert sched.programs == 0


def test_a_program_busy_elsewhere_is_waited_for_only_the_window():
  after = threading.Barrier(3)  # the busy program ends only once the others have their rows
  with DeviceScheduler() as sched:
    co = Coalescer(_fn(), wait_s=0.05, scheduler=sched)
    x = np.ones((1, 3), np.float32)

    def call():
      out = co(x, W)
      after.wait(60)
      return out

    outs = _programs(sched, [call, call, lambda: after.wait(60)])
  np.testing.assert_allclose(outs[0], _want(x), rtol=1e-5)
  assert list(sched.history) == [(co.name, 2, "window")]
  assert sched.stats.window == 1 and sched.stats.quiescent == 0


def test_the_fullest_queue_runs_first_then_the_rest():
  with DeviceScheduler() as sched:
    a = Coalescer(_fn(), wait_s=600.0, scheduler=sched, name="a")
    b = Coalescer(_fn(2.0), wait_s=600.0, scheduler=sched, name="b")
    x = np.ones((1, 3), np.float32)
    outs = _programs(sched, [lambda: b(x, W)] + [lambda: a(x, W)] * 3)
  np.testing.assert_allclose(outs[0], _want(x, 2.0), rtol=1e-5)
  # a (3 requests) before b (1); once a's programs end, b's program alone is quiescent
  assert list(sched.history) == [("a", 3, "quiescent"), ("b", 1, "quiescent")]


def test_within_a_queue_the_row_shape_with_most_requests_runs_first():
  fn = BucketedJit(lambda x, w: jnp.tanh(x[..., :3] @ w), buckets=BUCKETS)
  with DeviceScheduler() as sched:
    co = Coalescer(fn, wait_s=600.0, scheduler=sched)
    short, long = np.ones((1, 3), np.float32), np.ones((1, 5), np.float32)
    outs = _programs(sched, [lambda: co(short, W)] + [lambda: co(long, W)] * 3)
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6)  # the same first 3 features
  assert list(sched.history) == [(co.name, 3, "quiescent"), (co.name, 1, "quiescent")]


def test_a_full_queue_runs_at_once_and_oversized_requests_run_alone():
  with DeviceScheduler() as sched:
    co = Coalescer(_fn(), wait_s=600.0, max_rows=4, scheduler=sched)
    x = np.random.default_rng(1).normal(size=(11, 3)).astype(np.float32)
    np.testing.assert_allclose(co(x, W), _want(x), rtol=1e-5, atol=1e-6)  # no program: full
  assert list(sched.history) == [(co.name, 1, "full")]


def test_errors_reach_the_callers_and_the_scheduler_survives():
  def boom(x, w):
    if x.shape[0] >= 4:
      raise ValueError("boom at trace")
    return x @ w

  with DeviceScheduler() as sched:
    bad = Coalescer(BucketedJit(boom, buckets=(1, 2, 4)), wait_s=600.0, scheduler=sched)
    good = Coalescer(_fn(), wait_s=600.0, scheduler=sched)
    x = np.ones((1, 3), np.float32)
    outs = _programs(
      sched,
      [lambda: _raises(bad, x) for _ in range(3)] + [lambda: good(x, W)],
    )
  assert outs[:3] == ["boom at trace"] * 3  # 3 rows -> bucket 4 -> the error, to each caller
  np.testing.assert_allclose(outs[3], _want(x), rtol=1e-5)
  assert bad.stats.errors == 1


def _raises(co, x):
  try:
    co(x, W)
  except ValueError as e:
    return str(e)
  return None


def test_close_runs_what_is_queued_and_refuses_later_calls():
  sched = DeviceScheduler()
  co = Coalescer(_fn(), wait_s=600.0, scheduler=sched)
  with sched.program(), sched.program():  # two in flight, none blocked: only close releases
    futures = [co.submit(np.ones((1, 3), np.float32), W) for _ in range(3)]
    co.close(timeout=30)
  assert all(f.done() and f.exception() is None for f in futures)
  assert list(sched.history) == [(co.name, 3, "closing")]
  with pytest.raises(RuntimeError, match="closed"):
    co.submit(np.ones((1, 3), np.float32), W)
  other = Coalescer(_fn(), wait_s=600.0, scheduler=sched)
  pending = other.submit(np.ones((2, 3), np.float32), W)
  sched.close(timeout=30)
  assert pending.done() and not sched._thread.is_alive()
  with pytest.raises(RuntimeError, match="closed"):
    Coalescer(_fn(), scheduler=sched)
  with pytest.raises(ValueError, match="patience"):
    DeviceScheduler(patience=0)


def test_the_registry_gives_every_coalesced_backend_of_a_toolbox_one_scheduler():
  import experts
  from experts import registry

  def fake(role):
    def make(section, ctx):
      return {"role": role, "scheduler": ctx.scheduler(registry.coalescing(ctx.config, role)[0])}

    return make

  factories = {r: {"fake": fake(r)} for r in ("detector", "grounder", "video_qa")}
  c = experts.default_config()
  for role in ("detector", "grounder", "video_qa"):
    c[role] = {"kind": "fake"}
  c.action_recognizer = {"kind": "none"}
  c.object_vocabulary = "open"
  c.coalesce = True
  c.grounder["coalesce"] = False  # a role's own switch
  box = registry.make_toolbox(c, factories=factories)
  assert isinstance(box.scheduler, DeviceScheduler)
  assert box.detector["scheduler"] is box.video_qa["scheduler"] is box.scheduler
  assert box.grounder["scheduler"] is None
  box.scheduler.close()
  c.coalesce = False
  assert registry.make_toolbox(c, factories=factories).scheduler is None


def test_two_workers_run_two_experts_batches_at_once():
  """With `workers=2` a second batch starts while the first runs: each batch below waits
  inside the expert until the other has started too (one worker would never get there)."""
  both = threading.Barrier(2)

  def expert(x):
    both.wait(30)  # returns only when the other expert's batch is running as well
    return x * 2

  sched = DeviceScheduler(workers=2)
  a = Coalescer(BucketedJit(expert, buckets=BUCKETS, jit=False), wait_s=600, scheduler=sched)
  b = Coalescer(BucketedJit(expert, buckets=BUCKETS, jit=False), wait_s=600, scheduler=sched)
  x = np.arange(6.0).reshape(2, 3)
  try:
    got = _programs(sched, [lambda: a(x), lambda: b(x + 1)])
  finally:
    sched.close()
  np.testing.assert_array_equal(got[0], x * 2)
  np.testing.assert_array_equal(got[1], (x + 1) * 2)
  assert sched.stats.batches == 2 and sched.stats.quiescent == 2
  assert not any(t.is_alive() for t in sched._threads)
  with pytest.raises(ValueError, match="workers must be >= 1"):
    DeviceScheduler(workers=0)


def _timed(seconds):
  """A row-wise expert whose batches take `seconds` (a host function: no compilation)."""

  def expert(x):
    time.sleep(seconds)
    return x * 2

  return BucketedJit(expert, buckets=BUCKETS, jit=False)


def _primed(sched, name, seconds):
  """A coalescer on `sched` whose recent batches took `seconds` (one full batch run first)."""
  co = Coalescer(_timed(seconds), wait_s=600.0, max_rows=8, scheduler=sched, name=name)
  co(np.ones((8, 3), np.float32))  # full: runs at once, and its time is recorded
  return co


@pytest.mark.parametrize("order", ["cheapest", "fullest"])
def test_the_cheapest_queue_runs_first_so_the_expensive_one_gathers_every_program(order):
  """Three programs wait on the expensive expert, one on a cheap call before it: the cheap
  batch first sends that program on, and the expensive batch holds all four (fullest first:
  the expensive batch runs twice)."""
  with DeviceScheduler(order=order) as sched:
    slow, fast = _primed(sched, "slow", 0.05), _primed(sched, "fast", 0.0)
    assert sched.batch_seconds(slow) >= 0.05 > sched.batch_seconds(fast)
    sched.history.clear()
    x = np.ones((1, 3), np.float32)
    outs = _programs(sched, [lambda: slow(x)] * 3 + [lambda: slow(fast(x))])
  np.testing.assert_array_equal(outs[3], x * 4)
  if order == "cheapest":
    assert list(sched.history) == [("fast", 1, "quiescent"), ("slow", 4, "quiescent")]
  else:
    assert list(sched.history) == [
      ("slow", 3, "quiescent"),
      ("fast", 1, "quiescent"),
      ("slow", 1, "quiescent"),
    ]


@pytest.mark.parametrize("window_cost", [0.5, 0.0])
def test_an_expensive_queue_waits_longer_for_a_program_still_running(window_cost):
  """Two programs wait on an expert whose batches take 0.4 s; a third reaches it after a
  0.02 s of other work. With window_cost 0.5 the window is 0.2 s and it joins them; with 0
  the coalescer's own 1 ms window runs the two alone."""
  with DeviceScheduler(window_cost=window_cost) as sched:
    slow = Coalescer(_timed(0.4), wait_s=0.001, max_rows=8, scheduler=sched, name="slow")
    slow(np.ones((8, 3), np.float32))
    sched.history.clear()
    x = np.ones((1, 3), np.float32)
    joined = threading.Event()  # without the long window: the late program starts after

    def late():
      if window_cost:
        time.sleep(0.02)
      else:
        assert joined.wait(60)
      return slow(x)

    def early():
      out = slow(x)
      joined.set()
      return out

    _programs(sched, [early, early, late])
  if window_cost:
    assert list(sched.history) == [("slow", 3, "quiescent")]
  else:
    assert list(sched.history) == [("slow", 2, "window"), ("slow", 1, "quiescent")]


def test_scheduler_arguments_are_checked():
  with pytest.raises(ValueError, match="order='largest' not in"):
    DeviceScheduler(order="largest")
  with pytest.raises(ValueError, match="window_cost must be >= 0"):
    DeviceScheduler(window_cost=-1.0)


def test_two_workers_start_no_expensive_batch_while_its_programs_may_come_from_a_running_one():
  """Workers=2: one program's cheap batch runs (held open by a gate) while two wait on an
  expensive expert. All three are blocked, but the second worker waits for the cheap batch,
  whose program then joins the expensive one (one batch of 3, not 2 + 1)."""
  gate = threading.Event()
  gate.set()

  def gated(x):
    assert gate.wait(30)
    return x * 2

  with DeviceScheduler(workers=2, window_cost=0.0) as sched:
    slow = _primed(sched, "slow", 0.05)
    fast = Coalescer(
      BucketedJit(gated, buckets=BUCKETS, jit=False),
      wait_s=600.0,
      max_rows=8,
      scheduler=sched,
      name="fast",
    )
    fast(np.ones((8, 3), np.float32))  # full: its (short) time recorded
    sched.history.clear()
    gate.clear()
    threading.Timer(0.3, gate.set).start()
    x = np.ones((1, 3), np.float32)
    outs = _programs(sched, [lambda: slow(x)] * 2 + [lambda: slow(fast(x))])
  np.testing.assert_array_equal(outs[2], x * 4)
  assert list(sched.history) == [("fast", 1, "quiescent"), ("slow", 3, "quiescent")]
