"""Sandbox overhead: programs/s in the worker pool vs in-process `exec` (the unsafe reference).

Usage: python benchmarks/sandbox_overhead.py [--programs 200] [--workers 2] [--runs_per_child 1]
       [--warm_spares]

Measures, in one run on this machine:
  1. a typical 4-tool-call program: in-process exec vs the sandbox (1 and N workers), and
     the CPU time one program costs the host and the worker processes (`cpu_time.py`);
  2. one tool call's round trip (worker -> parent -> worker);
  3. a tool returning a 16x224x224x3 uint8 clip, passed by value vs kept behind a handle;
  4. the cost of replacing a worker after a timeout kill;
  5. the floor of a fresh child per run: the CPU of a bare fork and exit of a process that
     holds the worker's imports (numpy, msgpack, the wire), what every run pays before it
     does anything.
Prints each figure and its ratio to the in-process reference.
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpu_time  # noqa: E402
from aotd_jax.agent.sandbox import Sandbox  # noqa: E402

PROGRAM = """
def execute_command(video_clip, query, possible_answers):
    clip = trim(video_clip, 0, 8)
    boxes = Find(clip, "cup")
    labels = Query_Objs(clip, possible_answers)
    n = len([b for b in boxes if b])
    return select_answer(query, labels + [str(n)], possible_answers)
"""
CALLS = (
  "def execute_command(video_clip, query, possible_answers):\n"
  "    for i in range(200):\n        noop(i)\n    return 1\n"
)
CLIP_CALLS = (
  "def execute_command(video_clip, query, possible_answers):\n"
  "    for i in range(20):\n        c = frames(video_clip)\n    return c.shape\n"
)


class Clip:
  def __init__(self, frames):
    self.frames = frames

  def __len__(self):
    return len(self.frames)


TOOLS = {
  "trim": lambda c, s, e: Clip(c.frames[s:e]),
  "Find": lambda c, name: [[1.0, 2.0, 3.0, 4.0]] * len(c),
  "Query_Objs": lambda c, answers: list(answers[:2]),
  "select_answer": lambda q, info, answers: answers[len(info) % len(answers)],
  "noop": lambda i: i,
}


def args():
  return {
    "video_clip": Clip(np.zeros((16, 32, 32, 3), np.uint8)),
    "query": "what?",
    "possible_answers": ["a", "b", "c", "d"],
  }


def in_process(source, tools, a):
  env = dict(tools)
  exec(compile(source, "<program>", "exec"), env)
  return env["execute_command"](**a)


def rate(fn, n):
  t0 = time.perf_counter()
  for _ in range(n):
    fn()
  return n / (time.perf_counter() - t0)


def cpu_per_program(n: int, **kw) -> tuple[float, float]:
  """(host, worker processes) CPU ms per program over `n` runs of PROGRAM on one worker."""
  meter = cpu_time.Meter()
  with Sandbox(1, **kw) as sb:
    sb.run(PROGRAM, TOOLS, args(), timeout_s=5)
    meter.start(sb)
    for _ in range(n):
      sb.run(PROGRAM, TOOLS, args(), timeout_s=5)
    meter.stop_host()
  meter.stop()
  return 1e3 * meter.host_s / n, 1e3 * meter.workers_s / n


_FORK_EXIT = """
import gc, os, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy, msgpack, ctypes, ast, sandbox_wire, sandbox_turns  # the worker's imports
gc.collect(); gc.freeze()
def cpu():
  s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime
n = int(sys.argv[2])
s0, c0 = cpu()
for _ in range(n):
  pid = os.fork()
  if pid == 0:
    os._exit(0)
  os.waitpid(pid, 0)
s1, c1 = cpu()
print(1e3 * (s1 - s0) / n, 1e3 * (c1 - c0) / n)
"""


def fork_exit_cpu_ms(n: int) -> tuple[float, float]:
  """(parent, child) CPU ms of one fork + exit of a process with the worker's imports."""
  agent = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "aotd_jax", "agent")
  out = subprocess.run(
    [sys.executable, "-I", "-OO", "-c", _FORK_EXIT, agent, str(n)],  # the worker's flags
    check=True,
    capture_output=True,
    text=True,
    env={"OPENBLAS_NUM_THREADS": "1", "LD_BIND_NOW": "1"},
  ).stdout
  parent, child = map(float, out.split())
  return parent, child


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--programs", type=int, default=200)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument(
    "--warm_spares",
    action="store_true",
    help="Sandbox(warm_spares=True): warm each spare child before its turn",
  )
  p.add_argument(
    "--runs_per_child",
    type=int,
    default=1,
    help="Sandbox(runs_per_child=...); 1 = a fresh child per run",
  )
  a = p.parse_args()
  n = a.programs
  ref = rate(lambda: in_process(PROGRAM, TOOLS, args()), n)
  print(f"in-process exec:            {ref:9.1f} programs/s")
  kw = {"runs_per_child": a.runs_per_child} if a.runs_per_child > 1 else {}
  if a.warm_spares:
    kw["warm_spares"] = True
  with Sandbox(1, **kw) as sb:
    sb.run(PROGRAM, TOOLS, args(), timeout_s=5)  # warm
    one = rate(lambda: sb.run(PROGRAM, TOOLS, args(), timeout_s=5), n)
    print(
      f"sandbox, 1 worker:          {one:9.1f} programs/s  ({ref / one:.0f}x slower, "
      f"{1e3 / one - 1e3 / ref:.2f} ms overhead per program)"
    )
    host_ms, worker_ms = cpu_per_program(n, **kw)
    print(
      f"CPU per program, 1 worker:  {host_ms + worker_ms:9.2f} ms  (host {host_ms:.2f}, "
      f"worker processes {worker_ms:.2f})"
    )
    t_calls = rate(lambda: sb.run(CALLS, TOOLS, args(), timeout_s=5), 20)
    print(f"tool-call round trip:       {1e3 / t_calls / 200:9.3f} ms per call")
    t0 = time.perf_counter()
    sb.run(
      "def execute_command(video_clip, query, possible_answers):\n    return 10 ** (10 ** 9)\n",
      TOOLS,
      args(),
      timeout_s=0.2,
    )
    sb.run(PROGRAM, TOOLS, args(), timeout_s=5)
    print(f"timeout kill + replacement: {(time.perf_counter() - t0 - 0.2) * 1e3:9.1f} ms")
  parent, child = fork_exit_cpu_ms(n)
  print(
    f"fork + exit, no run:        {parent + child:9.2f} ms CPU  (fork {parent:.2f}, exit in "
    f"the child {child:.2f}: the floor of a fresh child per run)"
  )
  with Sandbox(a.workers, **kw) as sb:
    with concurrent.futures.ThreadPoolExecutor(a.workers) as pool:
      list(pool.map(lambda _: sb.run(PROGRAM, TOOLS, args(), timeout_s=5), range(4)))
      t0 = time.perf_counter()
      list(pool.map(lambda _: sb.run(PROGRAM, TOOLS, args(), timeout_s=5), range(n)))
      many = n / (time.perf_counter() - t0)
    print(
      f"sandbox, {a.workers} workers (threads): {many:9.1f} programs/s  "
      f"({ref / many:.0f}x slower than in-process)"
    )

  big = {"video_clip": np.zeros((16, 224, 224, 3), np.uint8), "query": "", "possible_answers": []}
  tools = {"frames": lambda c: c}
  for label, limit in (("by value", 1 << 30), ("by handle", 1 << 20)):
    with Sandbox(1, memory_mb=1024, array_by_value_bytes=limit) as sb:
      sb.run(CLIP_CALLS, tools, big, timeout_s=10)
      r = rate(lambda: sb.run(CLIP_CALLS, tools, big, timeout_s=10), 5)
      print(f"2.4 MB clip {label:9s}:     {1e3 / r / 21:9.2f} ms per transfer")


if __name__ == "__main__":
  main()
