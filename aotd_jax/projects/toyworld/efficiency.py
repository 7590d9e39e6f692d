"""Student vs agent on the same test questions: seconds per question and peak memory.

Each system runs in a fresh process (`python -c ...`), so that its peak memory is its own:
`VmHWM` of that process (reset at `exec`, unlike `ru_maxrss`, which a child inherits from a
big parent), plus, for the agent, the peaks of its sandbox workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Mapping

import ml_collections

from aotd_jax.agent import job
from aotd_jax.projects.toyworld.agent import build_agent, make_sandbox
from aotd_jax.projects.toyworld.common import (
  DemoError,
  REPO_ROOT,
  cached,
  enable_compilation_cache,
  load_tokenizer,
  read_split,
  run_student,
  write_json,
)


def _hwm_mb(pid: int | str = "self") -> float:
  """Peak resident memory (VmHWM) of a process. Unlike `ru_maxrss`, it starts afresh at
  `exec`, so a child started by a big parent reports its own peak."""
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def _children_hwm_mb() -> float:
  """Sum of the peaks of this process's live children (the sandbox's workers)."""
  me, total = str(os.getpid()), 0.0
  for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else ()):
    try:
      with open(f"/proc/{pid}/stat") as f:
        ppid = f.read().rsplit(")", 1)[1].split()[1]
    except (OSError, IndexError):
      continue
    if ppid == me:
      total += _hwm_mb(pid)
  return total


def _own_peak(eff: dict) -> dict:
  if eff["memory_kind"] == "host_rss" and _hwm_mb() > 0:
    eff = dict(eff, peak_mb=_hwm_mb(), memory_kind="host_vmhwm")
  return eff


def efficiency_child(spec: Mapping) -> dict:
  """Runs one system (the student or the agent) on the spec's test questions: a warm-up pass
  first (compilation), then the timed pass. Called in a fresh process so that the peak
  memory is this system's own."""
  from aotd_jax.eval import efficiency

  config = ml_collections.ConfigDict(spec["config"])
  if config.get("compilation_cache", True):
    enable_compilation_cache(spec["workdir"])
  world_dir = spec["world_dir"]
  records = read_split(world_dir, "test")[: config.efficiency.questions]
  if spec["system"] == "student":
    from aotd_jax import hf

    model, tokenizer = hf.from_pretrained(spec["student"]), load_tokenizer(spec["student"])
    # The same batches twice: the first run compiles, the second is timed.
    run_student(config, model, tokenizer, records, world_dir, "answer", config.eval.max_new_tokens)
    with efficiency.measure(len(records)) as eff:
      run_student(
        config, model, tokenizer, records, world_dir, "answer", config.eval.max_new_tokens
      )
    return {**_own_peak(eff.to_dict()), "children_peak_mb": 0.0}
  out = spec["out_dir"]
  os.makedirs(out, exist_ok=True)
  with make_sandbox(config) as sb:
    agent = build_agent(
      config, world_dir, spec["experts"], sb, os.path.join(out, "fallbacks.jsonl")
    )
    agent.process(records)  # warm-up: compiles the experts' and the generator's programs
    paths = job.JobPaths.for_shard(out, "test")
    for p in (paths.records, paths.stats):
      if os.path.exists(p):
        os.remove(p)
    with efficiency.measure(len(records)) as eff:
      stats = agent.run(records, paths, label="[agent] ", progress_every_s=60.0)
    children = _children_hwm_mb()
  return {
    **_own_peak(eff.to_dict()),
    "children_peak_mb": children,
    "records": paths.records,
    "agent_accuracy": stats.answer_passed / max(stats.total, 1),
  }


def _in_subprocess(spec: Mapping, out_path: str, timeout_s: float) -> dict:
  spec_path = out_path + ".spec.json"
  write_json(spec_path, spec)
  code = (
    "import json, sys; from aotd_jax.projects.toyworld import efficiency as e; "
    "spec = json.load(open(sys.argv[1])); "
    "e.write_json(sys.argv[2], e.efficiency_child(spec))"
  )
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, spec_path, out_path],
    cwd=str(REPO_ROOT),
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout_s,
  )
  if proc.returncode != 0:
    raise DemoError(
      f"efficiency run of the {spec['system']} failed (exit {proc.returncode}):\n"
      f"{proc.stderr[-2000:]}"
    )
  with open(out_path) as f:
    return json.load(f)


def efficiency_stage(
  config, workdir: str, world_dir: str, student_path: str, experts_info: Mapping
) -> dict:
  """Seconds per question and peak memory of the student and of the agent, same questions."""
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)

  def compute():
    spec = {
      "config": config.to_dict(),
      "workdir": workdir,
      "world_dir": world_dir,
      "student": student_path,
      "experts": dict(experts_info),
      "out_dir": os.path.join(out, "agent_test"),
    }
    runs = {}
    for system in ("student", "agent"):
      s = dict(spec, system=system)
      path = os.path.join(out, f"efficiency_{system}.json")
      runs[system] = (
        _in_subprocess(s, path, config.efficiency.timeout_s)
        if config.efficiency.subprocess
        else efficiency_child(s)
      )
    st, ag = runs["student"], runs["agent"]
    agent_peak = ag["peak_mb"] + ag["children_peak_mb"]
    return {
      "questions": st["questions"],
      "agent_s_per_question": ag["seconds_per_question"],
      "student_s_per_question": st["seconds_per_question"],
      "agent_peak_mb": agent_peak,
      "student_peak_mb": st["peak_mb"],
      "agent_process_peak_mb": ag["peak_mb"],
      "agent_sandbox_peak_mb": ag["children_peak_mb"],
      "memory_kind": st["memory_kind"],
      "speedup": ag["seconds_per_question"] / max(st["seconds_per_question"], 1e-9),
      "memory_ratio": agent_peak / max(st["peak_mb"], 1e-9),
      "agent_accuracy": ag["agent_accuracy"],
      "agent_records": ag["records"],
    }

  return cached(os.path.join(out, "efficiency.json"), compute)
