r"""Agent throughput on the toy world: programs/s through the sandbox vs in-process `exec`,
and with expert batching on vs off.

One run, same questions, programs (the toy world's gold programs) and decoded clips:
  1. in-process `exec` of each program with the oracle experts (the unsafe reference);
  2. the sandbox (`aotd_jax.agent.Sandbox`), 1 worker, sequential;
  3. the sandbox, 2 workers driven by 2 threads (as the CoT job runs it);
  -> programs/s, sandbox overhead per program and the ratio to (1).
  4. the sandbox with a (tiny, random) OWLv2 detector as the detection expert, batched over
     frames in buckets 1..32, vs
  5. the same detector one frame per call (bucket 1) -> programs/s and the ratio.
The grounder, action and answer experts stay the oracle in 4/5, so only detection differs.
Each measured pass uses a fresh toolbox (empty cache); compilation is warmed up first.

  python benchmarks/agent_cpu.py                 # figures in benchmarks/RESULTS.md
  python benchmarks/agent_cpu.py --clips=4 --detector_preset=tiny  # a smoke run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]


def in_process(source, tools, args):
  """The unsafe reference: the original AoTD code `exec`s programs in its own globals."""
  namespace = dict(tools)
  try:
    exec(source, namespace)  # noqa: S102 - the reference being measured
    return namespace["execute_command"](**args)
  except Exception:  # a failing program counts as run, as in the sandbox
    return None


def timed(fn, jobs, threads=1):
  t0 = time.perf_counter()
  if threads == 1:
    out = [fn(*j) for j in jobs]
  else:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      out = list(pool.map(lambda j: fn(*j), jobs))
  return time.perf_counter() - t0, out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--clips", type=int, default=12, help="toy-world clips (~3 questions each)")
  ap.add_argument("--skip_detector", action="store_true", help="skip the OWLv2 batching part")
  ap.add_argument("--detector_preset", default="cpu", help="experts_tools.PRESETS: cpu | tiny")
  args = ap.parse_args(argv)

  import experts
  from aotd_jax.agent import programs
  from aotd_jax.agent.sandbox import Sandbox
  from aotd_jax.data import annotations
  from aotd_jax.projects.toyworld import world as toyworld
  from configs.toyworld import cot as toy
  from launch import generate_cots

  tmp = tempfile.mkdtemp()
  paths = toyworld.generate_world(tmp, seed=0, num_clips=args.clips)
  config = toy.get_config(f"world={tmp},split=train")
  questions = annotations.read("star", paths["train"])
  make_args = generate_cots.clip_args(config)
  jobs_args = [make_args(qa) for qa in questions]  # decode once, outside the timings
  sources = [programs.parse_program(qa.meta["question_program"]).source for qa in questions]
  n = len(questions)

  def oracle_tools():
    return experts.make_tools(config.experts, plugins=generate_cots.PLUGINS)

  def run_all(runner, tools_fn, threads=1):
    tools = tools_fn()
    return timed(lambda s, a: runner(s, tools, a), list(zip(sources, jobs_args)), threads)

  result = {"questions": n, "clips": args.clips, "frames_per_clip": len(jobs_args[0]["video_clip"])}
  run_all(in_process, oracle_tools)  # warm-up (imports, caches of numpy code paths)
  t_exec, ref = run_all(in_process, oracle_tools)
  with Sandbox(num_workers=1) as sb1:
    run = lambda s, tools, a: sb1.run(s, tools, a, timeout_s=30)
    run_all(run, oracle_tools)
    t_sb1, out1 = run_all(run, oracle_tools)
  with Sandbox(num_workers=2) as sb2:
    run = lambda s, tools, a: sb2.run(s, tools, a, timeout_s=30)
    run_all(run, oracle_tools, threads=2)
    t_sb2, out2 = run_all(run, oracle_tools, threads=2)
  agree = sum(o.ok and o.value == r for o, r in zip(out1, ref))
  result.update(
    {
      "exec_programs_per_s": round(n / t_exec, 1),
      "sandbox_1w_programs_per_s": round(n / t_sb1, 1),
      "sandbox_2w_programs_per_s": round(n / t_sb2, 1),
      "sandbox_overhead_ms_per_program": round(1000 * (t_sb1 - t_exec) / n, 2),
      "ratio_sandbox_1w_vs_exec": round(t_sb1 / t_exec, 2),
      "ratio_sandbox_2w_vs_exec": round(t_sb2 / t_exec, 2),
      "sandbox_answers_equal_exec": f"{agree}/{n}",
      "sandbox_2w_ok": f"{sum(o.ok for o in out2)}/{n}",
    }
  )

  if not args.skip_detector:
    import experts_tools  # the tiny OWLv2 the experts benchmark builds (same weights recipe)
    from experts.backends.owlv2 import Owlv2Detector

    with tempfile.TemporaryDirectory() as d:
      _, model = experts_tools.build(experts_tools.PRESETS[args.detector_preset], d)

    def with_detector(buckets):
      detector = Owlv2Detector(model, experts_tools.tokenize, buckets=buckets, nms_threshold=0.3)

      def make():
        box = experts.make_toolbox(config.experts, plugins=generate_cots.PLUGINS)
        box.detector = detector
        return box.tools()

      return make

    with Sandbox(num_workers=1) as sb:
      run = lambda s, tools, a: sb.run(s, tools, a, timeout_s=120)
      batched, single = with_detector(experts.DEFAULT_BUCKETS), with_detector((1,))
      run_all(run, batched)  # compile every bucket
      run_all(run, single)
      t_on, _ = run_all(run, batched)
      t_off, _ = run_all(run, single)
    result.update(
      {
        "detector_batched_programs_per_s": round(n / t_on, 2),
        "detector_per_frame_programs_per_s": round(n / t_off, 2),
        "ratio_batching_on_vs_off": round(t_off / t_on, 2),
        "detector_preset": args.detector_preset,
      }
    )
  print(json.dumps(result, indent=1))
  return result


if __name__ == "__main__":
  main()
