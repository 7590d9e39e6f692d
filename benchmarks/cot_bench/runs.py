"""One run of the questions' programs in a mode, with its figures; the coalescers' warm-up
(every bucket compiled before the timed rounds) and each coalesced part's batch cost."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time

import numpy as np

from benchmarks.cot_bench.accounting import cpu_by_thread, thread_cpu_s
from benchmarks.cot_bench.harness import Experts, Timed
from benchmarks.cot_bench.questions import program


def warm_coalescer(c) -> int:
  """What `Coalescer.warm()` compiles, less what no batch of this benchmark runs; returns the
  calls made. `fn` at every bucket size on each row shape seen; in "device" mode the
  per-request gathers only for the request's own bucket (a row shape's requests all bring the
  same number of rows here: a 32-frame clip to OWLv2, one prefix to LLaVA), and none where the
  request fills the chunk alone (the coalescer then hands the output back whole), their
  indices made on the host (an eager `jnp.zeros` compiles a program per length). A gather the
  warm-up runs find missing is compiled there, and one left for a timed round is counted in
  `xla_compilations_timed`."""
  import jax

  from experts.batching import bucket_size, num_rows, pad_rows
  from experts.coalesce import _take_jit  # the coalescer's own jitted gather: its compilations

  calls = 0
  for rows, args in c.samples():
    n, buckets = num_rows(rows), c.fn.buckets
    # one row (a device array of one row as it is: slicing it would copy it)
    row = jax.tree.map(lambda a: a if a.shape[0] == 1 else a[:1], rows)
    own = bucket_size(n, buckets)
    for size in buckets:
      out = c.fn.run_chunk(pad_rows(row, size), *args)
      if c.output == "host":
        jax.tree.map(np.asarray, out)
      elif own <= size and n != size:
        jax.block_until_ready(_take_jit(out, jax.numpy.asarray(np.zeros(own, np.int32))))
      else:
        jax.block_until_ready(out)
      calls += 1
  return calls


def warm_coalescers(coalescers: dict, seen: dict | None = None) -> dict:
  """`warm_coalescer` of each coalescer in its own thread (their compilations overlap), or
  with `seen` ({name: row shapes warmed}) only of those that have seen new row shapes since;
  returns {name: row shapes warmed now}."""
  seen = seen or {}
  todo = {k: c for k, c in coalescers.items() if len(c.samples()) > seen.get(k, 0)}
  counts = {k: len(c.samples()) for k, c in coalescers.items()}
  if todo:
    with concurrent.futures.ThreadPoolExecutor(len(todo)) as pool:
      list(pool.map(warm_coalescer, todo.values()))
  return counts


def batch_cost(ex: Experts, copies: int = 16, repeats: int = 5) -> dict:
  """Per coalesced part: seconds of one call on its first request alone and on `copies`
  copies of it (best of `repeats`), and the gain `copies` x one / together."""
  import jax

  out = {}
  for name, c in ex.coalescers().items():
    for i, (rows, args) in enumerate(c.samples()):
      many = jax.tree.map(lambda a: np.concatenate([a] * copies), rows)
      times = []
      for batch in (rows, many):
        c.fn(batch, *args, to_host=True)  # compiled (warm), but run once untimed
        best = float("inf")
        for _ in range(repeats):
          t0 = time.perf_counter()
          c.fn(batch, *args, to_host=True)
          best = min(best, time.perf_counter() - t0)
        times.append(best)
      out[name + (f"#{i}" if i else "")] = {
        "rows_per_request": int(jax.tree.leaves(rows)[0].shape[0]),
        "one_request_ms": round(times[0] * 1e3, 2),
        f"{copies}_requests_ms": round(times[1] * 1e3, 2),
        "gain": round(copies * times[0] / times[1], 2),
      }
  return out


def run(ex: Experts, questions: list[dict], threads: int, threshold: float) -> dict:
  """`questions`' programs, `threads` at a time, on `ex` in its current mode (fresh tool cache
  and feature caches): wall and CPU seconds, answers, and the experts', coalescers',
  scheduler's and feature caches' figures of this run."""
  import experts
  from experts.backends import oracle

  ex.detector.clear_features()
  ex.grounder.clear_features()
  ex.llava.clear_features()
  caches = {
    "owlv2/image": ex.detector.feature_cache,
    "univtg/frames": ex.grounder.feature_cache,
    "llava/video": ex.llava.feature_cache,
    "llava/prefix": ex.llava.prefix_cache,
  }
  caches = {k: c for k, c in caches.items() if c is not None}
  cache0 = {k: dataclasses.replace(c.stats) for k, c in caches.items()}
  seconds, lock = {}, threading.Lock()
  box = experts.Toolbox(
    detector=Timed(ex.detector, "owlv2", seconds, lock),
    grounder=Timed(ex.grounder, "univtg+clip", seconds, lock),
    action_recognizer=Timed(ex.llava, "llava", seconds, lock),
    video_qa=Timed(ex.llava, "llava", seconds, lock),
    selector=oracle.KeywordSelector(),
    detect_threshold=threshold,
    find="frames",
    exist="detector",
  )
  tools = box.tools()
  before = {
    k: (c.stats.busy_s, c.stats.batches, c.stats.requests) for k, c in ex.coalescers().items()
  }
  sched = ex.scheduler.stats
  sched0 = dataclasses.replace(sched)
  ex.scheduler.history.clear()

  programs_s = [0.0]

  def one(q):
    c0 = time.thread_time()
    try:
      with ex.scheduler.program():  # the scheduler knows the programs in flight
        return program(tools, q)
    finally:
      spent = time.thread_time() - c0
      with lock:
        programs_s[0] += spent

  threads0 = thread_cpu_s()
  t0, cpu0 = time.perf_counter(), time.process_time()
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    answers = list(pool.map(one, questions))
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  by_thread = cpu_by_thread(threads0, thread_cpu_s(), programs_s[0], len(questions))
  workers = {}
  for k, c in ex.coalescers().items():
    busy, batches, requests = (
      a - b
      for a, b in zip(
        (c.stats.busy_s, c.stats.batches, c.stats.requests), before.get(k, (0.0, 0, 0))
      )
    )
    if batches:
      workers[k] = {
        "busy_s": round(busy, 3),
        "batches": batches,
        "requests_per_batch": round(requests / batches, 2),
      }
  rules = {
    k: getattr(sched, k) - getattr(sched0, k) for k in ("quiescent", "full", "window", "closing")
  }
  feature_caches = {
    k: {
      "hits": c.stats.hits - cache0[k].hits,
      "shared": c.stats.shared - cache0[k].shared,
      "misses": c.stats.misses - cache0[k].misses,
      "bytes": c.stats.bytes,
    }
    for k, c in caches.items()
  }
  return {
    "wall_s": wall,
    "cpu_s": cpu,
    "cpu_ms_per_question_by_thread": by_thread,
    "feature_caches": feature_caches,
    "answers": answers,
    "expert_call_s": seconds,
    "workers": workers,
    "scheduler_batches_by_rule": {k: v for k, v in rules.items() if v},
    # the batches in the order they ran: "expert part:requests:rule"
    "scheduler_history": [f"{n}:{k}:{r}" for n, k, r in ex.scheduler.history],
  }
