"""The benchmark's accounting: a language model's weight bytes per decode step, and the CPU
seconds of this process's threads (`/proc/self/task`), split by kind of thread."""

from __future__ import annotations

import os
import threading


def decode_weight_mb(model) -> float:
  """Megabytes of the language model's weights one decode step reads: all but the input
  embedding table (one row per token); the LM head is read whole."""
  import jax
  from flax import nnx

  leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model.language_model, nnx.Param))
  nbytes = {jax.tree_util.keystr(k): x.size * x.dtype.itemsize for k, x in leaves}
  table = sum(v for k, v in nbytes.items() if "embed_tokens" in k)
  return (sum(nbytes.values()) - table) / 2**20


def thread_cpu_s() -> dict[int, tuple[str, float]]:
  """CPU seconds (user + system) so far of each thread of this process, by native thread id,
  with the thread's name: the Python thread's, else the OS name (`/proc/self/task/*/comm`, e.g.
  XLA's pools); {} where there is no /proc. Clock-tick resolution (10 ms): for totals."""
  try:
    tids = os.listdir("/proc/self/task")
  except OSError:
    return {}
  names = {t.native_id: t.name for t in threading.enumerate()}
  tick, out = os.sysconf("SC_CLK_TCK"), {}
  for tid in map(int, tids):
    try:
      with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
        stat = f.read()
      with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
        comm = f.read().strip()
    except OSError:  # the thread ended meanwhile
      continue
    fields = stat[stat.rindex(")") + 2 :].split()  # fields 14 and 15 of proc(5): utime, stime
    out[tid] = (names.get(tid, comm), (int(fields[11]) + int(fields[12])) / tick)
  return out


def cpu_by_thread(before: dict, after: dict, programs_s: float, questions: int) -> dict:
  """CPU milliseconds per question by kind of thread over a run: `programs` (the program
  threads' own CPU, `time.thread_time` around each program: tools, host pre/post-processing,
  dispatch when a call runs on its caller), the device scheduler's and coalescers' workers
  (by thread name, numbers dropped), and the other threads by OS name (XLA CPU's intra-op
  pool `tf_XLAEigen`; `python`: native threads that kept the process's name, XLA's runtime
  threads among them); `process` is their sum (threads that ended in the run, the programs
  aside, are not counted)."""
  import re

  kinds: dict[str, float] = {}
  for tid, (name, cpu) in after.items():
    if tid in before and before[tid][0] == name:  # else started during the run
      cpu -= before[tid][1]
    kind = re.sub(r"[/_-]?\d+$", "", name)
    kinds[kind] = kinds.get(kind, 0.0) + cpu
  kinds = {k: v for k, v in kinds.items() if v > 0}
  kinds["programs"] = programs_s
  out = {k: round(v / questions * 1e3, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
  out["process"] = round(sum(kinds.values()) / questions * 1e3, 2)
  return out
