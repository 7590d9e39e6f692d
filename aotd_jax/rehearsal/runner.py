"""Runs the rehearsal: builds the world (`prepare`), runs each stage's command as a
subprocess, checks its outputs, prints a table and writes `W/rehearsal.json`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from aotd_jax.rehearsal import checkpoints, datasets, stages as stages_lib
from aotd_jax.rehearsal.stub_server import Replies, StubServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prepare(
  workdir: str, *, questions: int = 4, seconds: float = 30.0, students: tuple[str, ...] = ()
) -> dict:
  """Checkpoints, datasets and paths under `workdir` (re-used when already there); `students`:
  the other students (`stages_lib.STUDENTS`) rehearsed after LLaVA-NeXT-Video."""
  ck = os.path.join(workdir, "checkpoints")
  done = os.path.join(ck, ".done")
  have = {}
  if os.path.isfile(done):
    with open(done) as f:
      have = json.load(f)
  paths = checkpoints.build_all(ck, datasets.texts(), have=have)
  if paths != have:
    with open(done, "w") as f:
      json.dump(paths, f)
  data = {
    "star": datasets.star(
      os.path.join(workdir, "data", "star"), questions=questions, seconds=seconds
    ),
    "nextqa": datasets.nextqa(
      os.path.join(workdir, "data", "nextqa"), questions=questions, seconds=seconds
    ),
    "activitynet_qa": datasets.activitynet_qa(
      os.path.join(workdir, "data", "anetqa"), seconds=seconds
    ),
  }
  paths = dict(paths)
  paths.update(
    student_orbax=os.path.join(workdir, "student_orbax"),
    cot_star_out=os.path.join(workdir, "cots", "star"),
    cot_nextqa_out=os.path.join(workdir, "cots", "nextqa"),
    train_workdir=os.path.join(workdir, "train"),
    export=os.path.join(workdir, "export"),
    eval_out=os.path.join(workdir, "eval"),
    grounder_dir=_grounder_dir(workdir, paths),
  )
  for student in students:
    paths.update(
      {
        f"train_workdir_{student}": os.path.join(workdir, f"train_{student}"),
        f"export_{student}": os.path.join(workdir, f"export_{student}"),
      }
    )
  return {"workdir": workdir, "paths": paths, "data": data, "students": list(students)}


def _grounder_dir(workdir: str, paths: dict) -> str:
  """The `train_grounder` layout (`univtg.ckpt` + `clip/`) that launch.eval_subtasks reads,
  linking the official checkpoint and the CLIP directory."""
  d = os.path.join(workdir, "checkpoints", "grounder")
  os.makedirs(d, exist_ok=True)
  for name, target in (("univtg.ckpt", paths["univtg"]), ("clip", paths["clip"])):
    link = os.path.join(d, name)
    if not os.path.lexists(link):
      os.symlink(os.path.abspath(target), link)
  return d


def gold_answers(data: dict) -> tuple[dict, set]:
  """question -> gold option for the stub selector; the last question of each dataset is
  answered wrongly (so the filter has something to drop)."""
  from aotd_jax.data import annotations

  answers, wrong = {}, set()
  for name, kw in (("star", {}), ("nextqa", {"map_path": data["nextqa"]["map"]})):
    qs = list(annotations.read(name, data[name]["ann"], **kw))
    for q in qs:
      answers[q.question] = q.answer
    wrong.add(qs[-1].question)
  return answers, wrong


def _probe(stage, env) -> str:
  if not stage.probe:
    return ""
  r = subprocess.run(
    [sys.executable, "-c", stage.probe],
    cwd=ROOT,
    env=env,
    text=True,
    capture_output=True,
    timeout=120,
  )
  return (
    (r.stdout.strip() or r.stderr.strip().splitlines()[-1])
    if (r.returncode or r.stdout.strip())
    else ""
  )


def run_stage(stage, ctx: dict, env: dict, log_dir: str) -> dict:
  row = {"stage": stage.name, "command": stage.text()}
  t0 = time.time()
  # a stage needs its inputs: those made earlier in this run must have passed (with --only,
  # stages not run now are taken from an earlier run in the same workdir)
  failed = [
    n for n in stage.needs if n in ctx["results"] and ctx["results"][n].get("status") != "ok"
  ]
  if failed:
    return dict(row, status="skipped", detail=f"needs {', '.join(failed)}", seconds=0.0)
  waiting = _probe(stage, env)
  if waiting:
    return dict(row, status="waiting", detail=waiting, seconds=round(time.time() - t0, 1))
  for path in stage.outputs:
    shutil.rmtree(path, ignore_errors=True)
  argv = [sys.executable if a == stages_lib.PY else a for a in stage.argv()]
  log = os.path.join(log_dir, f"{stage.name}.log")
  with open(log, "w") as f:
    try:
      rc = subprocess.run(
        argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=stage.timeout_s
      ).returncode
    except subprocess.TimeoutExpired:
      rc = "timeout"
  row["log"] = log
  row["seconds"] = round(time.time() - t0, 1)
  if rc != 0:
    with open(log) as f:
      tail = [line.rstrip() for line in f.readlines()[-200:] if line.strip()]
    errors = [line for line in tail if "Error" in line or "error" in line]
    return dict(row, status="failed", detail=f"exit {rc}: {(errors or tail or [''])[-1][:300]}")
  try:
    figures = stage.check(stage, ctx) if stage.check else {}
  except stages_lib.CheckFailed as e:
    return dict(row, status="check failed", detail=str(e)[:500])
  except stages_lib.Gap as e:
    return dict(row, status="gap", detail=str(e)[:500])
  return dict(
    row, status="ok", detail=", ".join(f"{k}={v}" for k, v in figures.items()), figures=figures
  )


def table(rows: list[dict]) -> str:
  w = max(len(r["stage"]) for r in rows)
  lines = [f"{'stage':<{w}}  {'status':<12} {'s':>6}  detail"]
  for r in rows:
    lines.append(
      f"{r['stage']:<{w}}  {r['status']:<12} {r.get('seconds', 0):>6.1f}  {r.get('detail', '')}"
    )
  return "\n".join(lines)


def run(
  workdir: str,
  *,
  only: list[str] | None = None,
  questions: int = 4,
  seconds: float = 30.0,
  students: tuple[str, ...] = tuple(stages_lib.STUDENTS),
) -> dict:
  """The whole rehearsal; returns (and writes to `workdir/rehearsal.json`) the results.
  `students`: the other students whose distill / export / hf_load / eval stages run after
  LLaVA-NeXT-Video's (default all of `stages_lib.STUDENTS`)."""
  unknown = [s for s in students if s not in stages_lib.STUDENTS]
  if unknown:
    raise ValueError(f"rehearsal: --students {unknown} not in {sorted(stages_lib.STUDENTS)}")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  log_dir = os.path.join(workdir, "logs")
  os.makedirs(log_dir, exist_ok=True)
  t0 = time.time()
  ctx = prepare(workdir, questions=questions, seconds=seconds, students=tuple(students))
  os.makedirs(ctx["paths"]["eval_out"], exist_ok=True)
  env = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ),
  )
  env.setdefault("JAX_PLATFORMS", "cpu")
  # The launchers see the host as a user's would: a test session's forced host devices
  # (tests/conftest.py) would give lnv7b's `fsdp=-1` mesh 8 devices for a batch of 4.
  env["XLA_FLAGS"] = " ".join(
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  )
  answers, wrong = gold_answers(ctx["data"])
  rows = [
    {
      "stage": "prepare",
      "status": "ok",
      "seconds": round(time.time() - t0, 1),
      "detail": "checkpoints, STAR + NExT-QA files, mp4s",
      "command": "",
    }
  ]
  ctx["results"] = {"prepare": rows[0]}
  with StubServer(Replies(answers, wrong)) as server:
    ctx["server"] = server
    for stage in stages_lib.plan(ctx):
      if only and stage.name not in only:
        continue
      row = run_stage(stage, ctx, env, log_dir)
      ctx["results"][stage.name] = row
      rows.append(row)
      print(
        f"[rehearse] {row['stage']}: {row['status']} ({row.get('seconds', 0)} s) "
        f"{row.get('detail', '')}",
        flush=True,
      )
    llm_counts = dict(server.replies.counts)
  result = {
    "workdir": workdir,
    "seconds": round(time.time() - t0, 1),
    "stages": rows,
    "llm_requests": llm_counts,
    "ok": all(r["status"] == "ok" for r in rows),
  }
  with open(os.path.join(workdir, "rehearsal.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(table(rows))
  return result
