"""The rehearsal's stages: one production launcher command each, and the checks of its outputs.

A stage's `command` is exactly what a researcher types (docs/reproduce.md shows the full-size
ones): `python -m <launcher>` with the production config; only sizes (`sizes`, listed apart so
the docs test can ignore them) and paths differ. A stage whose prerequisite has not landed yet
says "waiting on ..." (`probe`) instead of running something else.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shlex
from typing import Callable

PY = "python"  # replaced by sys.executable when run


@dataclasses.dataclass
class Stage:
  name: str
  command: list[str]  # production command (paths filled in)
  sizes: list[str] = dataclasses.field(default_factory=list)  # rehearsal-only size flags
  check: Callable[["Stage", dict], dict] | None = None  # -> figures; raises CheckFailed
  probe: str = ""  # python snippet: prints "waiting on ..." when a prerequisite is missing
  needs: tuple[str, ...] = ()  # stages that must have passed
  timeout_s: int = 600
  outputs: tuple[str, ...] = ()  # removed before the stage runs (a re-run starts clean)
  student: str = ""  # another student's stages ("onevision7b"): its name ends the stage's

  def base_name(self) -> str:
    """The stage's name without its student suffix (`eval_star_mc_onevision7b` -> `eval_star_mc`)."""
    suffix = f"_{self.student}"
    return self.name[: -len(suffix)] if self.student and self.name.endswith(suffix) else self.name

  def path(self, ctx: dict, key: str) -> str:
    """`ctx["paths"][key]`, or its student's own (`key_<student>`) for a student's stage."""
    return ctx["paths"][f"{key}_{self.student}" if self.student else key]

  def argv(self) -> list[str]:
    return self.command + self.sizes

  def text(self) -> str:
    return " ".join(shlex.quote(a) for a in self.argv())


class CheckFailed(AssertionError):
  """A stage ran but its outputs are wrong (the message says what)."""


class Gap(Exception):
  """A stage ran but the launcher lacks something the issue asks for (reported, not faked)."""


def _require(cond: bool, msg: str) -> None:
  if not cond:
    raise CheckFailed(msg)


# -- checks ---------------------------------------------------------------------------------


def check_convert(stage: Stage, ctx: dict) -> dict:
  orbax = ctx["paths"]["student_orbax"]
  steps = [d for d in os.listdir(orbax) if d.isdigit()] if os.path.isdir(orbax) else []
  _require(steps == ["0"], f"{orbax}: expected one step 0, found {steps}")
  return {"steps": steps}


def read_cot_dir(out: str) -> dict:
  """Counts of a CoT job's output directory (records, kept, manifest summary)."""
  records = []
  for path in sorted(glob.glob(os.path.join(out, "records-*.jsonl"))):
    with open(path) as f:
      records += [json.loads(line) for line in f if line.strip()]
  manifest_path = os.path.join(out, "manifest.json")
  _require(os.path.isfile(manifest_path), f"{manifest_path}: missing")
  with open(manifest_path) as f:
    manifest = json.load(f)
  shards = glob.glob(os.path.join(out, "cot-*.array_record"))
  return {"records": records, "manifest": manifest, "shards": shards}


def check_cot(stage: Stage, ctx: dict) -> dict:
  out = ctx["paths"][f"{stage.name}_out"]
  expected = ctx["data"][stage.name.split("_", 1)[1]]["questions"]
  got = read_cot_dir(out)
  records, manifest = got["records"], got["manifest"]
  _require(len(records) == expected, f"{out}: {len(records)} records, expected {expected}")
  _require(
    manifest.get("vision_experts") == "real",
    f"{out}/manifest.json: vision_experts={manifest.get('vision_experts')!r}, expected "
    "'real' (the real experts, no oracle)",
  )
  roles = manifest.get("roles", {})
  kinds = {
    r: roles.get(r, {}).get("kind")
    for r in ("detector", "grounder", "action_recognizer", "video_qa", "selector", "program_llm")
  }
  want = {
    "detector": "owlv2",
    "grounder": "univtg",
    "action_recognizer": "llava",
    "video_qa": "llava",
    "selector": "openai",
    "program_llm": "openai",
  }
  _require(kinds == want, f"{out}/manifest.json: role kinds {kinds}, expected {want}")
  ref = f"manifest.json#{manifest.get('id')}"
  _require(all(r.get("manifest") == ref for r in records), f"{out}: a record does not name {ref}")
  parsed = sum(bool(r.get("verdicts", {}).get("parsed")) for r in records)
  executed = sum(bool(r.get("verdicts", {}).get("executed")) for r in records)
  kept = sum(bool(r.get("kept")) for r in records)
  _require(
    all(r.get("llm_replies", {}).get("program") for r in records),
    f"{out}: a record has no raw program reply",
  )
  _require(parsed == len(records), f"{out}: {len(records) - parsed} programs did not parse")
  errors = [
    r.get("verdicts", {}).get("error") or r.get("error")
    for r in records
    if not r.get("verdicts", {}).get("executed")
  ]
  _require(
    executed == len(records),
    f"{out}: {len(records) - executed} programs failed on the real experts: {errors[:2]}",
  )
  _require(
    0 < kept < len(records) or len(records) < 2,
    f"{out}: kept {kept} of {len(records)}: the filter should keep some and drop some",
  )
  _require(len(got["shards"]) == 1, f"{out}: expected one cot-*.array_record shard")
  unknown = ctx["server"].replies.counts.get("unknown", 0)
  _require(unknown == 0, f"the stub LLM got {unknown} prompts it does not recognise")
  return {"records": len(records), "parsed": parsed, "executed": executed, "kept": kept}


def _load_json(path: str) -> dict:
  _require(os.path.isfile(path), f"{path}: missing")
  with open(path) as f:
    return json.load(f)


def check_distill(stage: Stage, ctx: dict) -> dict:
  wd = stage.path(ctx, "train_workdir")
  steps = ctx["train_steps"]
  ckpts = sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit())
  _require(ckpts and ckpts[-1] == steps, f"{wd}/checkpoints: steps {ckpts}, expected {steps}")
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  # metric names: "train/loss" (TensorBoard tags) or plain "loss"
  rows = [{k.split("/", 1)[-1]: v for k, v in r.items()} for r in rows]
  rows = [r for r in rows if "loss" in r]
  _require(len(rows) == steps, f"{wd}/metrics.jsonl: {len(rows)} step rows, expected {steps}")
  losses = [r["loss"] for r in rows]
  _require(all(l == l and abs(l) < 1e4 for l in losses), f"non-finite losses {losses}")
  cot_tokens = sum(r.get("rationale_tokens", 0) for r in rows)
  qa_tokens = sum(r.get("label_tokens", 0) for r in rows)
  _require(
    cot_tokens > 0, f"{wd}: no rationale tokens in {steps} steps: the kept CoTs were not trained on"
  )
  _require(qa_tokens > 0, f"{wd}: no answer tokens in {steps} steps")
  # the trainer compared each CoT set's manifest with its frames (aotd_jax/train/cot_frames.py)
  with open(os.path.join(wd, "cot_frames.json")) as f:
    frames = json.load(f)
  checked = [s for s in frames["sources"] if s.get("manifest")]
  _require(
    len(checked) == 2, f"{wd}/cot_frames.json: {len(checked)} CoT manifests checked, expected 2"
  )
  mismatches = sorted({k for s in checked for k in s["mismatches"]})
  _require(
    not mismatches or frames["allow_cot_frame_mismatch"],
    f"{wd}/cot_frames.json: mismatches {mismatches} without allow_cot_frame_mismatch",
  )
  return {
    "steps": steps,
    "cot_frame_mismatches": mismatches,
    "loss_first": round(losses[0], 4),
    "loss_last": round(losses[-1], 4),
    "rationale_tokens": int(cot_tokens),
    "answer_tokens": int(qa_tokens),
  }


def check_export(stage: Stage, ctx: dict) -> dict:
  d = stage.path(ctx, "export")
  files = set(os.listdir(d)) if os.path.isdir(d) else set()
  need = {"config.json", "tokenizer.json", "tokenizer_config.json"}
  _require(need <= files, f"{d}: missing {sorted(need - files)}")
  _require(any(f.endswith(".safetensors") for f in files), f"{d}: no safetensors")
  card = os.path.join(d, "README.md")
  if os.path.isfile(card):
    with open(card) as f:
      text = f.read()
    _require(
      "detector: owlv2" in text and "grounder: univtg" in text and "oracle" not in text,
      f"{card}: the model card does not name the real experts that made the CoTs",
    )
    _require("counts: " in text and "kept " in text, f"{card}: the model card has no CoT counts")
    _require(not ctx.get("workdir") or ctx["workdir"] not in text, f"{card}: names a local path")
  return {"files": len(files), "model_card": os.path.isfile(card)}


def check_parity(stage: Stage, ctx: dict) -> dict:
  got = _load_json(parity_json(ctx["paths"]["eval_out"], stage.student))
  _require(got["ok"], f"export parity: {got}")
  return {
    "max_abs_diff": f"{got['max_abs_diff']:.1e}",
    "changed_tensors": got.get("tensors_changed_by_training"),
  }


def parity_json(eval_out: str, student: str = "") -> str:
  return os.path.join(eval_out, f"export_parity{'_' + student if student else ''}.json")


def check_eval(stage: Stage, ctx: dict) -> dict:
  dataset, mode = stage.base_name().split("_", 1)[1].rsplit("_", 1)
  got = _load_json(os.path.join(ctx["paths"]["eval_out"], f"{stage.name}.json"))
  want = ctx["data"][dataset]["questions"]
  _require(
    len(got.get("outputs", [])) == want,
    f"{stage.name}: {len(got.get('outputs', []))} outputs, expected {want}",
  )
  # the docs' flags are what the student trained with (the export's aotd_training.json)
  differs = got.get("settings", {}).get("differs_from_training")
  _require(not differs, f"{stage.name}: flags other than the student trained with: {differs}")
  if mode == "mc":
    acc = {
      k: round(v, 3)
      for k, v in _flat(got).items()
      if "accuracy" in k and isinstance(v, (int, float))
    }
    _require(acc, f"{stage.name}: no accuracy in {sorted(got)}")
    if ctx.get("scoring") == "both":
      _require(
        any("likelihood" in k for k in acc),
        f"{stage.name}: --scoring=both wrote no likelihood accuracy: {sorted(acc)}",
      )
    return {**acc, "questions": want}
  if mode == "rationale":
    keys = [k for k in got if "grounding" in k or k in ("box_iou", "window_iou")]
    if not keys:
      raise Gap(
        "launch.evaluate --mode=rationale writes no rationale grounding "
        f"(keys: {sorted(k for k in got if k != 'outputs')})"
      )
    return {k: got[k] for k in keys}
  return {"questions": want}


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    elif k != "outputs":
      out[f"{prefix}{k}"] = v
  return out


def check_judge(stage: Stage, ctx: dict) -> dict:
  got = _load_json(os.path.join(ctx["paths"]["eval_out"], "judged_open_ended.json"))
  flat = {k: v for k, v in got.items() if isinstance(v, (int, float))}
  _require(flat, f"judge_open_ended: no scores in {sorted(got)}")
  return flat


def check_subtasks(stage: Stage, ctx: dict) -> dict:
  got = _load_json(os.path.join(ctx["paths"]["eval_out"], "subtasks.json"))
  trained = got.get("trained", got)
  _require(trained, f"eval_subtasks: no results for the real experts in {sorted(got)}")
  return {"roles": ",".join(sorted(trained)) if isinstance(trained, dict) else str(trained)}


def check_pod(stage: Stage, ctx: dict) -> dict:
  with open(os.path.join(ctx["workdir"], "logs", f"{stage.name}.log")) as f:
    text = f.read()
  _require("gcloud" in text and "--worker=all" in text, "launch.tpu.pod printed no gcloud command")
  _require(
    "launch.train" in text and "configs/distill/lnv7b.py:tpu_v5p_128" in text,
    "launch.tpu.pod: the worker command is not launch.train with lnv7b's tpu_v5p_128",
  )
  _require(
    "--config.data.datasets.star.cots=" in text, "launch.tpu.pod dropped the dataset overrides"
  )
  return {"workers": "all"}


def signature(argv: list[str]) -> tuple:
  """What a command is, sizes and paths aside: the module (and sub-command), the flag names,
  the config file and the keys of its `:arg`. docs/reproduce.md's commands and the
  rehearsal's must have the same signatures."""
  argv = [a for a in argv if a]
  if argv[:2] != [PY, "-m"] or len(argv) < 3:
    return ("external", argv[0])
  module, rest = argv[2], argv[3:]
  if rest and not rest[0].startswith("-"):
    module, rest = f"{module} {rest[0]}", rest[1:]
  flags, config = set(), ()
  for a in rest:
    name, _, value = a.partition("=")
    if name == "--config":
      path, _, arg = value.partition(":")
      keys = tuple(sorted(k.partition("=")[0] for k in arg.split(",") if "=" in k))
      config = (path, keys)
    if name == "--override":
      name = "--config." + value.partition("=")[0]
    flags.add(name)
  return (module, tuple(sorted(flags)), config)


# -- the plan --------------------------------------------------------------------------------


def cot_command(name: str, p: dict, d: dict, url: str) -> list[str]:
  arg = {"ann": d["ann"], "videos": d["videos"]}
  if name == "star":
    arg["classes"] = d["classes"]
  else:
    arg["map"] = d["map"]
  arg.update(
    owlv2=p["owlv2"],
    univtg=p["univtg"],
    clip=p["clip"],
    llava=p["llava"],
    llm=url,
    model="stub-coder",
    out=p[f"cot_{name}_out"],
  )
  spec = ",".join(f"{k}={v}" for k, v in arg.items())
  return [
    PY,
    "-m",
    "launch.generate_cots",
    f"--config=configs/cot/{name}.py:{spec}",
    "--shard_index=0",
    "--num_shards=1",
  ]


def plan(ctx: dict) -> list[Stage]:
  """Every stage, in order, for the paths in `ctx` (see `runner.prepare`)."""
  p, d, url = ctx["paths"], ctx["data"], ctx["server"].url
  stages = [
    Stage(
      "convert",
      [
        PY,
        "-m",
        "aotd_jax.hf",
        "convert",
        f"--hf_dir={p['llava']}",
        f"--orbax_dir={p['student_orbax']}",
      ],
      check=check_convert,
      outputs=(p["student_orbax"],),
    ),
  ]
  stages.append(
    Stage(
      "subtasks",
      [
        PY,
        "-m",
        "launch.eval_subtasks",
        "--kind=star",
        f"--data={d['star']['ann']}",
        f"--detector={p['owlv2']}",
        f"--grounder={p['grounder_dir']}",
        f"--llama={p['llama']}",
        f"--llava={p['llava']}",
        f"--video_dir={d['star']['videos']}",
        f"--classes_dir={d['star']['classes']}",
        f"--out={p['eval_out']}/subtasks.json",
      ],
      check=check_subtasks,
    )
  )
  for name in ("star", "nextqa"):
    stages.append(
      Stage(
        f"cot_{name}",
        cot_command(name, p, d[name], url),
        sizes=[
          "--config.batch_size=4",
          "--config.sandbox.num_workers=1",
          "--config.sandbox.memory_mb=2048",
          "--config.report_samples=0",
        ],
        check=check_cot,
        outputs=(p[f"cot_{name}_out"],),
      )
    )
  train = [
    PY,
    "-m",
    "launch.train",
    f"--config=configs/distill/lnv7b.py:h100x8,hf_dir={p['llava']},datasets=star+nextqa",
  ]
  for name in ("star", "nextqa"):
    train += [
      f"--config.data.datasets.{name}.annotations={d[name]['ann']}",
      f"--config.data.datasets.{name}.video_root={d[name]['videos']}",
      f"--config.data.datasets.{name}.cots={p[f'cot_{name}_out']}/cot-*.array_record",
    ]
  train.append(f"--workdir={p['train_workdir']}")
  # two steps: the first (warmup, lr 0) compiles the step, the second trains on both kinds of
  # batch rows (CoT and QA) and changes the weights that the exports are checked against.
  # seq_len 512 holds every rehearsal row whole (32 frames' 129 video tokens, the prompt and
  # the CoT: the losses are those of 1024 to 4 digits) at a quarter of 1024's attention
  ctx["train_steps"] = 2
  stages.append(
    Stage(
      "distill",
      train,
      check=check_distill,
      needs=("cot_star", "cot_nextqa"),
      outputs=(p["train_workdir"],),
      sizes=[
        f"--config.total_steps={ctx['train_steps']}",
        "--config.batch_size=4",
        "--config.data.seq_len=512",
        "--config.data.num_workers=0",
        "--config.log_every=1",
        "--config.expected_devices=0",  # the preset's 8 GPUs on this CPU
      ],
    )
  )
  pod = [
    PY,
    "-m",
    "launch.tpu.pod",
    "--tpu=aotd-v5p-128",
    "--zone=us-east5-a",
    "--config=configs/distill/lnv7b.py:tpu_v5p_128,hf_dir=" + p["llava"] + ",datasets=star+nextqa",
  ]
  for a in train[4:-1]:
    pod.append("--override=" + a[len("--config.") :])
  pod += [f"--workdir={p['train_workdir']}_pod", "--dry_run"]
  stages.append(Stage("distill_pod", pod, check=check_pod))
  stages.append(
    Stage(
      "export",
      [
        PY,
        "-m",
        "launch.export",
        f"--workdir={p['train_workdir']}",
        f"--hf_dir={p['export']}",
        f"--tokenizer={p['llava']}",
        f"--cot_manifest={p['cot_star_out']}/manifest.json",
      ],
      check=check_export,
      needs=("distill",),
      outputs=(p["export"],),
    )
  )
  stages.append(
    Stage(
      "hf_load",
      [
        PY,
        "-m",
        "aotd_jax.rehearsal.export_parity",
        f"--hf_dir={p['export']}",
        f"--orbax_dir={p['train_workdir']}/checkpoints",
        f"--init_dir={p['llava']}",
        f"--out={p['eval_out']}/export_parity.json",
      ],
      check=check_parity,
      needs=("export",),
    )
  )

  def evaluate(name, dataset, fmt, mode, extra=()):
    dd = d[dataset]
    stages.append(
      Stage(
        name,
        [
          PY,
          "-m",
          "launch.evaluate",
          f"--student={p['export']}",
          f"--format={fmt}",
          f"--annotations={dd['ann']}",
          f"--video_root={dd['videos']}",
          *extra,
          "--num_frames=32",
          "--prompt_format=official",
          f"--mode={mode}",
          f"--out={p['eval_out']}/{name}.json",
        ],
        check=check_eval,
        needs=("export",),
      )
    )

  # lnv7b trains on official prompts with the letter as the QA target; closed-set scoring
  # (the likelihood of each option) next to the parsed reply
  mc = ["--answer_style=letter", "--scoring=both"]
  ctx["scoring"] = "both"
  evaluate("eval_star_mc", "star", "star", "answer", mc)
  evaluate("eval_nextqa_mc", "nextqa", "nextqa", "answer", [f"--map={d['nextqa']['map']}", *mc])
  evaluate("eval_star_rationale", "star", "star", "rationale")
  evaluate("eval_activitynet_qa_open", "activitynet_qa", "activitynet_qa", "answer")
  stages.append(
    Stage(
      "judge_open_ended",
      [
        PY,
        "-m",
        "launch.judge_open_ended",
        f"--eval={p['eval_out']}/eval_activitynet_qa_open.json",
        "--format=activitynet_qa",
        f"--annotations={d['activitynet_qa']['ann']}",
        f"--llm={url}",
        "--model=stub-coder",
        f"--out={p['eval_out']}/judged_open_ended.json",
      ],
      check=check_judge,
      needs=("eval_activitynet_qa_open",),
    )
  )
  for student in ctx.get("students", ()):
    stages += student_stages(ctx, student, train_data=train[4:-1], mc=mc)
  return stages


# Other students (issue 24): config name -> (the rehearsal checkpoint's role, frames evaluated).
STUDENTS = {"onevision7b": ("onevision", 32), "qwen2vl7b": ("qwen2vl", 16)}


def student_stages(ctx: dict, student: str, *, train_data: list[str], mc: list[str]) -> list[Stage]:
  """Another student's distillation (its production config with lnv7b's data flags), export,
  transformers reload and multiple-choice evaluation: the stages named `<stage>_<student>`."""
  if student not in STUDENTS:
    raise ValueError(f"rehearsal: student {student!r} not in {sorted(STUDENTS)}")
  role, frames = STUDENTS[student]
  p, d = ctx["paths"], ctx["data"]
  workdir, export = p[f"train_workdir_{student}"], p[f"export_{student}"]
  named = lambda name: f"{name}_{student}"  # noqa: E731
  star = d["star"]
  return [
    Stage(
      named("distill"),
      [
        PY,
        "-m",
        "launch.train",
        f"--config=configs/distill/{student}.py:h100x8,hf_dir={p[role]},datasets=star+nextqa",
        *train_data,
        f"--workdir={workdir}",
      ],
      check=check_distill,
      needs=("cot_star", "cot_nextqa"),
      outputs=(workdir,),
      sizes=[
        f"--config.total_steps={ctx['train_steps']}",
        "--config.batch_size=4",
        "--config.data.seq_len=512",
        "--config.data.num_workers=0",
        "--config.log_every=1",
        "--config.expected_devices=0",  # the preset's 8 GPUs on this CPU
        # Qwen2-VL's 16 frames on section 2's 32-frame CoTs (docs/reproduce.md, section 6):
        # deliberate here, so the trainer's frame check is told so
        *(["--config.data.allow_cot_frame_mismatch=True"] if frames != 32 else []),
      ],
      student=student,
    ),
    Stage(
      named("export"),
      [
        PY,
        "-m",
        "launch.export",
        f"--workdir={workdir}",
        f"--hf_dir={export}",
        f"--tokenizer={p[role]}",
        f"--cot_manifest={p['cot_star_out']}/manifest.json",
      ],
      check=check_export,
      needs=(named("distill"),),
      outputs=(export,),
      student=student,
    ),
    Stage(
      named("hf_load"),
      [
        PY,
        "-m",
        "aotd_jax.rehearsal.export_parity",
        f"--hf_dir={export}",
        f"--orbax_dir={workdir}/checkpoints",
        f"--init_dir={p[role]}",
        f"--out={parity_json(p['eval_out'], student)}",
      ],
      check=check_parity,
      needs=(named("export"),),
      student=student,
    ),
    Stage(
      named("eval_star_mc"),
      [
        PY,
        "-m",
        "launch.evaluate",
        f"--student={export}",
        "--format=star",
        f"--annotations={star['ann']}",
        f"--video_root={star['videos']}",
        *mc,
        f"--num_frames={frames}",
        "--prompt_format=official",
        "--mode=answer",
        f"--out={p['eval_out']}/{named('eval_star_mc')}.json",
      ],
      check=check_eval,
      needs=(named("export"),),
      student=student,
    ),
  ]


def placeholder_plan() -> list[Stage]:
  """The plan over placeholder paths (what the commands are, without building anything)."""

  class _Server:
    url = "http://127.0.0.1:0/v1"

  keys = (
    "llava",
    "llama",
    "owlv2",
    "clip",
    "univtg",
    "student_orbax",
    "cot_star_out",
    "cot_nextqa_out",
    "train_workdir",
    "export",
    "eval_out",
    "grounder_dir",
  )
  keys += tuple(role for role, _ in STUDENTS.values())
  keys += tuple(f"{k}_{s}" for s in STUDENTS for k in ("train_workdir", "export"))
  data = {
    name: {
      "ann": f"{name}.ann",
      "videos": f"{name}/videos",
      "classes": "classes",
      "map": "map.json",
      "questions": 1,
    }
    for name in ("star", "nextqa", "activitynet_qa")
  }
  return plan(
    {
      "paths": {k: k for k in keys},
      "data": data,
      "server": _Server(),
      "workdir": "W",
      "students": list(STUDENTS),
    }
  )


def docs_commands(text: str) -> list[list[str]]:
  """The shell commands of the ```sh blocks of a Markdown page (continuations joined)."""
  out, inside, pending = [], False, ""
  for line in text.splitlines():
    if line.startswith("```"):
      inside = line.strip() == "```sh"
      continue
    if not inside or not line.strip():
      continue
    pending += line.rstrip()
    if pending.endswith("\\"):
      pending = pending[:-1] + " "
      continue
    out.append(shlex.split(pending))
    pending = ""
  return out
