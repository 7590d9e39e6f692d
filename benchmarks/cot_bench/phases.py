"""The phases of a benchmark run (build, probe, warm-up, timed rounds, batch cost) under the
run's clock, and the summary of the timed modes."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.budget import RunClock
from benchmarks.cot_bench.accounting import decode_weight_mb
from benchmarks.cot_bench.harness import Experts
from benchmarks.cot_bench.questions import OBJECTS, make_questions
from benchmarks.cot_bench.runs import batch_cost, run, warm_coalescers


def measure(args, p: dict, modes: dict, workers: int, clock: RunClock, result: dict) -> dict:
  """The phases of a run (build, probe, warm-up, timed rounds, batch cost) under `clock`;
  `result` gets each figure as it is known."""
  with clock.phase("build"):
    ex = Experts(
      p,
      args.wait_ms / 1000,
      args.feature_cache_mb,
      workers,
      args.llava_feature_cache_mb,
      result["llava_prefix_cache_mb"],
      args.scheduler_order,
      args.scheduler_window_cost,
    )
  result["llava_decode_weight_mb"] = round(decode_weight_mb(ex.llava.model), 2)
  result["build_s"] = round(ex.build_s, 1)
  with clock.phase("probe"):
    # the detection threshold: the 99th percentile of the random model's scores (some boxes)
    probe = make_questions(dict(p, questions=1), "probe", 99)[0]["clip"]
    logits = ex.detector.raw_outputs(probe, [OBJECTS[0]])[0]
    threshold = float(np.quantile(1 / (1 + np.exp(-logits.astype(np.float64))), 0.99))
  warm = make_questions(dict(p, per_video=1), "warm", 1)  # compiles every mode's shapes
  warm_wall = {}  # mode -> (seconds, questions) of its warm-up run
  t0 = time.perf_counter()
  if clock.fits("warmup"):
    # two questions (both spans, a summary) with coalescing on, one at a time, show every
    # coalescer its row shapes (each request a batch of its own: the programs of its own
    # bucket compile here, whatever the timing); then all coalescers compile every other
    # bucket at once, from parallel threads (XLA compiles outside the GIL: at real sizes the
    # programs compile side by side, not one after the other through the scheduler); the
    # warm-up runs then find them compiled
    with clock.phase("warmup/first_pass"), ex.mode("on"):
      run(ex, warm[:2], 1, threshold)
    with clock.phase("warmup/coalescers"):
      seen = warm_coalescers(ex.coalescers())
    for mode, threads in modes.items():
      # off/serial run each call alone: two questions cover their shapes
      qs = warm if mode.split("-")[0] in ("on", "per_expert") else warm[:2]
      if not clock.fits(f"warmup/{mode}"):
        continue
      with clock.phase(f"warmup/{mode}"), ex.mode(mode):
        warm_wall[mode] = (run(ex, qs, threads, threshold)["wall_s"], len(qs))
    # every batch size a timed round may form, for row shapes first seen after the first pass
    with clock.phase("warmup/coalescers_late"):
      warm_coalescers(ex.coalescers(), seen)
  result["warmup_compile_s"] = round(time.perf_counter() - t0, 1)
  n, secs = clock.compiled("warmup")
  result["xla_compilations_warmup"] = n
  result["xla_compile_s_warmup_summed"] = round(secs, 1)

  best = {}
  answers = {}
  for r in range(p["rounds"]):
    qs = make_questions(p, f"r{r}", 10 + r)
    for mode, threads in modes.items():
      # from its warm-up run; a mode whose warm-up did not run (None) would compile while
      # timed: not started either
      predicted = (
        warm_wall[mode][0] * p["questions"] / warm_wall[mode][1] if mode in warm_wall else None
      )
      if not clock.fits(f"timed/{mode}/r{r}", predicted):
        continue
      with clock.phase(f"timed/{mode}"), ex.mode(mode):
        out = run(ex, qs, threads, threshold)
      answers.setdefault(mode, out["answers"])
      if mode not in best or out["wall_s"] < best[mode]["wall_s"]:
        best[mode] = out
        result["questions_per_s"][mode] = round(p["questions"] / out["wall_s"], 3)
  cost = None
  if args.batch_cost and clock.fits("batch_cost"):
    with clock.phase("batch_cost"):
      cost = batch_cost(ex)
  ex.close()
  return dict(result, **summary(p, best, answers, clock), **({"batch_cost": cost} if cost else {}))


def summary(p: dict, best: dict, answers: dict, clock: RunClock) -> dict:
  """The figures of the timed modes that ran (a mode skipped by the budget has none; a ratio
  needing it is null)."""
  qps = {m: p["questions"] / b["wall_s"] for m, b in best.items()}

  def ratio(a: str, b: str):
    return round(qps[a] / qps[b], 2) if a in qps and b in qps else None

  out = {
    "questions_per_s": {m: round(v, 3) for m, v in qps.items()},
    "seconds_per_question": {m: round(1 / v, 4) for m, v in qps.items()},
    "process_cpu_s_per_question": {
      m: round(b["cpu_s"] / p["questions"], 4) for m, b in best.items()
    },
    "cpu_ms_per_question_by_thread": {
      m: b["cpu_ms_per_question_by_thread"] for m, b in best.items()
    },
    "ratio_on_vs_off": ratio("on", "off"),
    "ratio_on_vs_serial": ratio("on", "serial"),
    "ratio_prefix_cache_on_vs_off": {
      m: ratio(m, f"{m}-noprefix") for m in qps if f"{m}-noprefix" in qps
    },
    "expert_call_s": {
      m: {k: round(v, 3) for k, v in b["expert_call_s"].items()} for m, b in best.items()
    },
    "feature_caches": {m: b["feature_caches"] for m, b in best.items()},
  }
  on = best.get("on")
  if on is not None:
    busy = sum(w["busy_s"] for w in on["workers"].values())
    out.update(
      coalescers_on=on["workers"],
      scheduler_batches_by_rule_on=on["scheduler_batches_by_rule"],
      scheduler_history_on=on["scheduler_history"],
      expert_workers_busy_fraction_on=round(busy / on["wall_s"], 3),
    )
  if "per_expert" in best:
    out.update(
      ratio_on_vs_per_expert=ratio("on", "per_expert"),
      coalescers_per_expert=best["per_expert"]["workers"],
    )
  ref = answers.get("off")
  out.update(
    same_answers=None if ref is None else all(a == ref for a in answers.values()),
    # questions of the first round whose answer or trace differs from the off mode's: in bf16
    # (the gpu preset) a batch's rounding can flip a greedy token of a long reply (~50 tokens
    # into a random model's summary), as it can in any batched bf16 inference
    answers_differing_from_off=None
    if ref is None
    else {m: sum(x != y for x, y in zip(a, ref)) for m, a in answers.items()},
    xla_compilations_timed=clock.compiled("timed")[0],
  )
  return out
