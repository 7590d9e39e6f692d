"""CoT job throughput on a toy world: questions/s of `CotJob.run` with gold programs (four
tool calls each, instant tools, the rule judge), every program run in the sandbox.

Usage: python benchmarks/cot_job_toy.py [--questions 200] [--workers 2] [--threads 2]
       [--runs_per_child 1] [--warm_spares] [--spare_children N] [--pipeline]

What it measures is the job's own cost per question (program execution in the sandbox,
records, fsync'd appends) with the models taken out; compare runs on the same machine.
By default one batch at a time (execute, judge, then append each record with an fsync, as
the job ran before its stages were pipelined); `--pipeline` runs the job as the launcher does
(`configs/common.py`: `pipeline.enabled`, 4 batches in flight, 2 decode threads), so batch
k+1's programs run while batch k's records are written. `--phases` also prints where the wall
time went (inside a batch's processing, the record appends, their fsyncs) and how much core
time the machine left idle in each (from /proc/stat: other jobs on the machine count too).
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_time  # noqa: E402
from aotd_jax.agent import Sandbox, job  # noqa: E402
from aotd_jax.data import annotations  # noqa: E402

PROGRAM = """def execute_command(video_clip, query, possible_answers):
    clip = Filter_frames_with_act(video_clip, query)
    boxes = Find(clip, "ball")
    info = {"ball": boxes, "n": len(boxes)}
    return select_answer(query, possible_answers, info)
"""


def tools():
  def Filter_frames_with_act(video_clip, action):
    """Keeps the window where `action` happens."""
    return {"start_frame": len(action) % 8, "end_frame": len(action) % 8 + 9}

  def Find(video_clip, object_name):
    """Boxes of `object_name`."""
    return [
      {
        "frame": video_clip["start_frame"] + i,
        "label": object_name,
        "score": 0.5,
        "box": [i, 2, i + 10, 12],
      }
      for i in range(2)
    ]

  def select_answer(query, possible_answers, info):
    """Picks one of possible_answers."""
    return possible_answers[len(query) % len(possible_answers)]

  return {
    "Filter_frames_with_act": Filter_frames_with_act,
    "Find": Find,
    "select_answer": select_answer,
  }


def questions(n):
  out = []
  for i in range(n):
    choices = [f"object {i}{c}" for c in "abcd"]
    q = annotations.VideoQA(
      qid=f"q{i}",
      video_id=f"v{i % 5}",
      question="Which moved?" + "?" * (i % 4),
      choices=choices,
      answer=choices[i % 4],
      answer_index=i % 4,
    )
    q.meta["question_program"] = PROGRAM
    out.append(q)
  return out


def idle_cores_s() -> float:
  """Seconds the machine's cores have been idle (idle + iowait, summed over cores; Linux)."""
  with open("/proc/stat") as f:
    fields = f.readline().split()[1:]
  return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")


class Phases:
  """Wall time and the machine's idle core time inside `CotJob.process` (a batch's execution
  and judges), `RecordLog.append` and its `os.fsync`, summed over the run (`--phases`; these
  three exist in the pre-issue-20 tree too). Wraps them in place: for this script only."""

  def __init__(self, job_module):
    self.acc = {}
    job_module.CotJob.process = self.wrap("process", job_module.CotJob.process)
    job_module.RecordLog.append = self.wrap("append", job_module.RecordLog.append)
    job_module.os.fsync = self.wrap("fsync", os.fsync)

  def wrap(self, name, fn):
    def timed(*args, **kwargs):
      t, idle = time.perf_counter(), idle_cores_s()
      try:
        return fn(*args, **kwargs)
      finally:
        acc = self.acc.setdefault(name, [0.0, 0.0])
        acc[0] += time.perf_counter() - t
        acc[1] += idle_cores_s() - idle

    return timed

  def report(self, n: int) -> str:
    return "; ".join(
      f"{name} {1e3 * wall / n:.2f} ms/question ({1e3 * idle / n:.2f} core-ms idle)"
      for name, (wall, idle) in self.acc.items()
    )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--questions", type=int, default=200)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument(
    "--warm_spares",
    action="store_true",
    help="Sandbox(warm_spares=True): warm each spare child before its turn",
  )
  p.add_argument("--runs_per_child", type=int, default=1)
  p.add_argument("--spare_children", type=int, default=None, help="Sandbox(spare_children=...)")
  p.add_argument(
    "--pipeline",
    action="store_true",
    help="CotJob(pipeline=True), as launch/generate_cots.py runs it (configs/common.py)",
  )
  p.add_argument(
    "--phases",
    action="store_true",
    help="also print the wall and idle core time in process / append / fsync",
  )
  a = p.parse_args()
  qs = questions(a.questions)
  kw = {"runs_per_child": a.runs_per_child} if a.runs_per_child > 1 else {}
  if a.warm_spares:
    kw["warm_spares"] = True
  if a.spare_children is not None:
    kw["spare_children"] = a.spare_children
  with Sandbox(a.workers, **kw) as sb, tempfile.TemporaryDirectory() as out:
    cot = job.CotJob(
      tools=tools(),
      program_source="gold",
      run_program=sb.run,
      make_args=lambda q: {
        "video_clip": {"start_frame": 0, "end_frame": 32},
        "query": q.question,
        "possible_answers": list(q.choices),
      },
      num_threads=a.threads,
      batch_size=8,
      **({"pipeline": True} if a.pipeline else {}),
    )
    cot.process(qs[:4])  # warm
    paths = job.JobPaths.for_shard(out, "00000-of-00001")
    meter = cpu_time.Meter()
    meter.start(sb)
    phases = Phases(job) if a.phases else None
    t0, idle = time.perf_counter(), idle_cores_s()
    with open(os.devnull, "w") as devnull:
      stats = cot.run(qs, paths, stream=devnull)
    dt, idle = time.perf_counter() - t0, idle_cores_s() - idle
    meter.stop_host()
  meter.stop()
  print(
    f"CoT job, toy world: {a.questions / dt:.1f} questions/s "
    f"({1e3 * dt / a.questions:.2f} ms/question; {stats.executed} executed, "
    f"{stats.kept} kept); CPU per question: host "
    f"{1e3 * meter.host_s / a.questions:.2f} ms, worker processes "
    f"{1e3 * meter.workers_s / a.questions:.2f} ms"
  )
  if phases is not None:
    print(
      f"  phases: run {1e3 * dt / a.questions:.2f} ms/question "
      f"({1e3 * idle / a.questions:.2f} core-ms idle); {phases.report(a.questions)}"
    )


if __name__ == "__main__":
  main()
