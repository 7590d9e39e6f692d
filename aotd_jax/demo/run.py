"""The demo's stages: world -> experts -> agent CoTs -> filter -> three students -> evaluation.

`run(config, workdir)` runs every stage of `configs/demo.py` and returns the report dict
(also written as `workdir/report.json` and `report.html` by `aotd_jax.demo.report`). Each
stage writes its output under `workdir` and a JSON summary last, so a rerun skips what is
done and a killed run resumes (the CoT job itself resumes question by question).

Layout of `workdir`: `world/` (STAR JSON + mp4s + ground truth), `experts/<role>/` (HF
directories, or nothing for oracle roles), `cots/` (job records, kept CoTs, unfiltered CoTs),
`students/<name>_s<seed>/` (HF directory + `train.json`), `eval/` (per-student outputs and
scores on the test split, efficiency), `report.{json,html}`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from aotd_jax.agent import cot, job, programs

DONE = "DONE"
REPO_ROOT = Path(__file__).resolve().parents[2]
CHANCE = 0.25  # four choices per toy-world question
EXPERT_ROLES = ("detector", "grounder", "qa", "program")


class DemoError(RuntimeError):
  """A stage cannot run (bad config, missing input); the message names the stage and cause."""


# -- caching --------------------------------------------------------------------------------------

def _write_json(path: str | os.PathLike, value: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True, default=_jsonable)
  os.replace(tmp, path)


def _jsonable(value: Any):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def cached(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
  """`compute()`'s JSON result, read back from `path` when a previous run finished it."""
  if os.path.exists(path):
    try:
      with open(path) as f:
        return json.load(f)
    except json.JSONDecodeError as e:
      raise DemoError(f"{path}: corrupt stage summary ({e}); delete it to recompute") from None
  value = compute()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  _write_json(path, value)
  return value


def _done(directory: str | os.PathLike) -> bool:
  return os.path.exists(os.path.join(directory, DONE))


def _mark_done(directory: str | os.PathLike) -> None:
  Path(directory, DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# -- stage 1: the world --------------------------------------------------------------------------

def world_stage(config, workdir: str) -> str:
  """Generates the toy world in `workdir/world` (once) and returns its directory."""
  out = os.path.join(workdir, "world")
  if not _done(out):
    from aotd_jax.data import toyworld
    w = config.world
    toyworld.generate_world(out, seed=w.seed, num_train=w.num_train, num_val=w.num_val,
                            num_test=w.num_test, size=w.size, fps=w.fps, seconds=w.seconds,
                            questions_per_type=w.questions_per_type)
    _mark_done(out)
  return out


def read_split(world_dir: str, split: str):
  """The split's questions as `VideoQA` records (STAR reader, as for real data)."""
  from aotd_jax.data import annotations
  return annotations.read("star", os.path.join(world_dir, f"{split}.json"))


# -- stage 2: tokenizer and experts --------------------------------------------------------------

def _trainer(module: str, name: str) -> Callable | None:
  """`aotd_jax.demo.<module>.<name>` when that expert trainer is committed, else None."""
  try:
    mod = importlib.import_module(f"aotd_jax.demo.{module}")
  except ImportError:
    return None
  return getattr(mod, name, None)


def _use_trained(section, fn: Callable | None, role: str) -> bool:
  source = section.get("source", "auto")
  if source not in ("auto", "trained", "oracle"):
    raise DemoError(f"config.experts.{role}.source={source!r}: expected auto, trained or oracle")
  if source == "trained" and fn is None:
    raise DemoError(f"config.experts.{role}.source='trained' but its trainer is not available")
  return source != "oracle" and fn is not None


def tokenizer_stage(config, workdir: str, world_dir: str) -> dict:
  """The toy tokenizer: the language-experts builder when present, else one trained here."""
  out = os.path.join(workdir, "experts", "tokenizer")
  build = _trainer("language_experts", "build_tokenizer")
  use = _use_trained(config.experts.tokenizer, build, "tokenizer")
  if not _done(out):
    if use:
      build(world_dir, out)
    else:
      from aotd_jax.data.toy_tokenizer import train_tokenizer
      texts = []
      for split in ("train", "val", "test"):
        for r in read_split(world_dir, split):
          texts += [r.question, " ".join(r.choices), r.meta.get("question_program", "")]
      train_tokenizer(texts + ["USER: ASSISTANT: (A) (B) (C) (D) frames [0, 0, 0, 0] in frame"],
                      out, vocab_size=512)
    _mark_done(out)
  return {"path": out, "source": "language_experts" if use else "demo"}


def _size(section) -> dict:
  return dict(section.get("size", {}) or {})


def experts_stage(config, workdir: str, world_dir: str, tokenizer_dir: str) -> dict:
  """Trains (or binds oracles for) each expert role; returns {role: {source, path}}."""
  trainers = {
      "detector": ("vision_experts", "train_detector"),
      "grounder": ("vision_experts", "train_grounder"),
      "qa": ("language_experts", "train_qa_expert"),
      "program": ("language_experts", "train_program_generator"),
  }
  out = {}
  for role in EXPERT_ROLES:
    section = config.experts[role]
    fn = _trainer(*trainers[role])
    if not _use_trained(section, fn, role):
      out[role] = {"source": "oracle" if role != "program" else "none", "path": ""}
      continue
    path = os.path.join(workdir, "experts", role)
    t0 = time.perf_counter()
    kw = dict(steps=int(section.steps), seed=int(config.world.seed), **_size(section))
    if role in ("detector", "grounder"):
      fn(world_dir, path, **kw)
    else:
      fn(world_dir, tokenizer_dir, path, **kw)
    out[role] = {"source": "trained", "path": path,
                 "seconds": round(time.perf_counter() - t0, 2)}
  return out


def tools_config(config, world_dir: str, experts_info: Mapping) -> ml_collections.ConfigDict:
  """The `experts.make_tools` config: trained models where present, oracles elsewhere."""
  import experts as experts_lib
  c = experts_lib.default_config()
  c.ground_truth.path = world_dir
  for role in ("detector", "grounder"):
    if experts_info[role]["source"] == "trained":  # the trainer's own binding of its output
      section = _trainer("vision_experts", f"{role}_section")
      if section is None:
        raise DemoError(f"aotd_jax.demo.vision_experts has no {role}_section()")
      c[role] = ml_collections.ConfigDict(section(experts_info[role]["path"]))
  if experts_info["qa"]["source"] == "trained":
    for role in ("action_recognizer", "video_qa"):
      c[role].kind, c[role].path = "llava", experts_info["qa"]["path"]
  if config.experts.selector == "llama" and experts_info["program"]["source"] == "trained":
    c.selector.kind, c.selector.path = "llama", experts_info["program"]["path"]
  return c


SUBTASK_KEYS = {  # report key -> (harness role, metric)
    "detection_iou": ("detector", "detection_iou"),
    "grounding_iou": ("grounder", "grounding_iou"),
    "action_top1": ("action_recognizer", "action_top1"),
    "qa_accuracy": ("video_qa", "qa_accuracy"),
    "program_accuracy": ("program_generator", "answer_accuracy"),
}


def subtask_stage(config, workdir: str, world_dir: str, experts_info: Mapping) -> dict:
  """The experts in use and the random baseline, scored by the sub-task harness
  (`aotd_jax.eval.subtasks`) on the held-out test split."""
  result: dict[str, Any] = {k: None for k in SUBTASK_KEYS}
  result.update(chance=CHANCE, sources={r: experts_info[r]["source"] for r in EXPERT_ROLES})
  if not config.experts.get("score", True):
    return result
  from aotd_jax.eval import subtasks
  tools = tools_config(config, world_dir, experts_info).to_dict()
  ours = {role: tools[role] for role in ("detector", "grounder", "action_recognizer", "video_qa")}
  if experts_info["program"]["source"] == "trained":
    ours["program_generator"] = {"kind": "llama", "path": experts_info["program"]["path"],
                                 "prompt": "demo", "max_new_tokens": config.agent.max_new_tokens}
  else:
    ours["program_generator"] = {"kind": "gold"}
  rand = {role: {"kind": "random", "seed": 0}
          for role in ("detector", "grounder", "action_recognizer", "video_qa")}
  rand["program_generator"] = {"kind": "random", "seed": 0}
  harness = ml_collections.ConfigDict({
      "data": {"kind": "toyworld", "path": world_dir, "split": "test",
               "max_videos": int(config.experts.get("score_videos", 0))},
      "candidates": {"ours": ours, "random": rand}, "threshold": 0.1, "max_frames": 0,
      "num_action_choices": 4})
  scores = subtasks.evaluate(harness)
  for key, (role, metric) in SUBTASK_KEYS.items():
    result[key] = scores["ours"].get(role, {}).get(metric)
    result[f"{key}_random"] = scores["random"].get(role, {}).get(metric)
  result["table"] = subtasks.subtask_table(scores)
  return result


# -- stage 3: the agent (programs -> sandbox -> CoTs -> two-step filter) --------------------------

def _compact_prompt() -> Callable[[str, Sequence[str]], str]:
  """The prompt the tiny program generator was trained on (language experts' own, if any)."""
  fn = _trainer("language_experts", "program_prompt")
  if fn is not None:
    return fn
  return lambda q, c: (f"Question: {q}\nPossible answers: {programs.format_choices(c)}\n"
                       f"{programs.PROGRAM_SIGNATURE}\n")


class ProgramWriter:
  """Writes one program per question with the tiny LLM; a reply that does not parse falls
  back to the annotation's gold program when the config allows it, and every fallback is
  appended to `fallback_log` (so resumed runs count them too)."""

  def __init__(self, llm, *, prompt: Callable[[str, Sequence[str]], str], max_new_tokens: int,
               fallback_to_gold: bool, fallback_log: str, gold_key: str = "question_program"):
    self.llm, self.prompt, self.max_new_tokens = llm, prompt, max_new_tokens
    self.fallback_to_gold, self.fallback_log, self.gold_key = fallback_to_gold, fallback_log, gold_key

  def __call__(self, batch) -> list[programs.ParsedProgram]:
    if self.llm is not None:
      prompts = [self.prompt(qa.question, qa.choices) for qa in batch]
      replies = self.llm.complete(prompts, max_new_tokens=self.max_new_tokens)
      parsed = [programs.parse_program(r) if programs.PROGRAM_NAME in r else
                programs.parse_program(r, prefix=programs.PROGRAM_SIGNATURE + "\n")
                for r in replies]
    else:
      parsed = [programs.ParsedProgram(None, "no program generator") for _ in batch]
    out = []
    for qa, p in zip(batch, parsed):
      if not p.ok and self.fallback_to_gold and isinstance(qa.meta.get(self.gold_key), str):
        with open(self.fallback_log, "a") as f:
          f.write(json.dumps({"qid": qa.qid, "reason": p.error}) + "\n")
        p = programs.parse_program(qa.meta[self.gold_key])
      out.append(p)
    return out


@dataclasses.dataclass
class DemoCotJob(job.CotJob):
  """`CotJob` whose program stage is a `ProgramWriter` (compact prompt + counted fallback)."""
  writer: Callable | None = None

  def _programs(self, batch):
    if self.program_source == "gold" or self.writer is None:
      return super()._programs(batch)
    return self.writer(batch)


def build_agent(config, world_dir: str, experts_info: Mapping, sandbox, fallback_log: str
                ) -> DemoCotJob:
  """The agent of the CoT stage (and of the efficiency run): tools, program writer, filter."""
  import experts as experts_lib
  a = config.agent
  if a.programs not in ("llm", "gold"):
    raise DemoError(f"config.agent.programs={a.programs!r}: expected 'llm' or 'gold'")
  generator = experts_info["program"]["source"] == "trained"
  if a.programs == "llm" and not generator and not a.fallback_to_gold:
    raise DemoError("config.agent.programs='llm' needs a trained program generator "
                    "(config.experts.program) or config.agent.fallback_to_gold=True")
  tools = experts_lib.make_tools(tools_config(config, world_dir, experts_info))
  llm = None
  if a.programs == "llm" and generator:
    from aotd_jax.agent.llm import LocalLlama
    llm = LocalLlama(experts_info["program"]["path"], max_batch=a.batch_size)
  writer = ProgramWriter(llm, prompt=_compact_prompt(), max_new_tokens=a.max_new_tokens,
                         fallback_to_gold=a.fallback_to_gold, fallback_log=fallback_log)
  video_dir = os.path.abspath(os.path.join(world_dir, "videos"))
  return DemoCotJob(tools=tools, make_args=clip_args(video_dir, a.max_frames),
                    run_program=sandbox.run,
                    program_llm=writer, program_source=a.programs, logic_judge=a.logic_judge,
                    batch_size=a.batch_size, num_threads=a.sandbox_workers,
                    timeout_s=a.timeout_s, writer=writer,
                    video_path=lambda qa: os.path.join(video_dir, f"{qa.video_id}.mp4"))


def clip_args(video_dir: str, max_frames: int) -> Callable:
  """qa -> `execute_command` arguments: the question's window of its clip as a `VideoClip`
  (uniformly subsampled to `max_frames`; frame ids keep the video's numbering)."""
  from aotd_jax.data import video
  from experts import VideoClip

  def make(qa):
    path = os.path.join(video_dir, f"{qa.video_id}.mp4")
    info = video.probe(path)
    first = 0 if qa.start is None else max(0, int(qa.start * info.fps))
    last = info.num_frames if qa.end is None else min(info.num_frames, int(qa.end * info.fps))
    ids = np.arange(first, max(last, first + 1))
    if len(ids) > max_frames:
      ids = ids[np.linspace(0, len(ids) - 1, max_frames).round().astype(int)]
    clip = VideoClip(video.decode_frames(path, ids), start_frame=int(ids[0]),
                     end_frame=int(ids[-1]) + 1, fps=info.fps, video_id=qa.video_id, frame_ids=ids)
    return {"video_clip": clip, "query": qa.question, "possible_answers": list(qa.choices)}
  return make


def _sandbox(config):
  from aotd_jax.agent.sandbox import Sandbox
  return Sandbox(num_workers=config.agent.sandbox_workers, memory_mb=config.agent.sandbox_memory_mb)


def _count_lines(path: str) -> int:
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if line.strip())


def unfiltered_cots(records: Sequence[Mapping], path: str) -> int:
  """Writes a CoT for every executed program (no filter), verbalised from its trace."""
  from aotd_jax.data import conversation
  n = 0
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for r in records:
      if not r["verdicts"].get("executed") or r.get("trace") is None:
        continue
      rationale = r.get("rationale") or cot.verbalise(r["trace"], r.get("prediction"))
      human = job.CONVERSATION_MEDIA + conversation.cot_user_text(r["question"], r["choices"])
      f.write(json.dumps({"qid": r["qid"], "video_id": r["video_id"], "video_path": r["video_path"],
                          "conversation": [{"from": "human", "value": human},
                                           {"from": "gpt", "value": rationale}]}) + "\n")
      n += 1
  os.replace(tmp, path)
  return n


def cot_stage(config, workdir: str, world_dir: str, experts_info: Mapping) -> dict:
  """Runs the CoT job on the train split (resumable); returns its paths and filter counts."""
  out = os.path.join(workdir, "cots")
  summary = os.path.join(out, "summary.json")

  def compute():
    os.makedirs(out, exist_ok=True)
    questions = read_split(world_dir, "train")
    paths = job.JobPaths.for_shard(out, job.shard_name(0, 1))
    fallback_log = os.path.join(out, "fallbacks.jsonl")
    t0 = time.perf_counter()
    with _sandbox(config) as sb:
      agent = build_agent(config, world_dir, experts_info, sb, fallback_log)
      stats = agent.run(questions, paths, label="[cots] ", progress_every_s=30.0)
    records = job.RecordLog(paths.records).load()
    unfiltered = os.path.join(out, "unfiltered.jsonl")
    n_unfiltered = unfiltered_cots(records, unfiltered)
    d = stats.to_dict()
    return {"questions": d["total"], "programs_parsed": d["parsed"], "programs_ok": d["executed"],
            "passed_answer": d["answer_passed"], "passed_judge": d["logic_passed"],
            "unfiltered": n_unfiltered, "gold_fallbacks": _count_lines(fallback_log),
            "program_source": config.agent.programs, "records": paths.records,
            "filtered_path": paths.array_record, "unfiltered_path": unfiltered,
            "seconds": round(time.perf_counter() - t0, 2)}
  return cached(summary, compute)


# -- stage 4: three students from the same init, same steps --------------------------------------

STUDENT_DATA = {"instruct": (), "aotd": ("filtered",), "aotd_unfiltered": ("unfiltered",)}


def _load_tokenizer(path: str):
  from aotd_jax import hf
  return hf.load_tokenizer(path)


def _student_init(config, tokenizer) -> dict:
  init = json.loads(json.dumps(config.students.init.to_dict()))
  vocab = -(-len(tokenizer) // 8) * 8  # the tokenizer's ids fit; a multiple of 8 for the matmul
  init["text_config"]["vocab_size"] = vocab
  for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
    init["text_config"][key] = getattr(tokenizer, key)
  init["video_token_index"] = tokenizer.convert_tokens_to_ids("<video>")
  init["image_token_index"] = tokenizer.convert_tokens_to_ids("<image>")
  return init


def student_stage(config, workdir: str, name: str, seed: int, world_dir: str,
                  tokenizer_dir: str, cots: Mapping) -> dict:
  """Distils student `name` (QA of the train split + its CoTs) and saves it as a HF directory."""
  if name not in STUDENT_DATA:
    raise DemoError(f"config.students.names: unknown student {name!r}; "
                    f"expected some of {sorted(STUDENT_DATA)}")
  out = os.path.join(workdir, "students", f"{name}_s{seed}")
  summary = os.path.join(out, "train.json")
  if _done(out) and os.path.exists(summary):
    with open(summary) as f:
      return json.load(f)
  import jax

  from aotd_jax import hf, sharding
  from aotd_jax.train import build, data as train_data
  from aotd_jax.train.loop import LoopConfig, train_loop
  from aotd_jax.train.optim import make_optimizer, trainable_filter
  from aotd_jax.train.trainer import Trainer
  s = config.students
  tokenizer = _load_tokenizer(tokenizer_dir)
  counts = {"filtered": cots["passed_judge"], "unfiltered": cots["unfiltered"]}
  cot_files = [{"path": cots[f"{kind}_path"], "weight": s.cot_weight}
               for kind in STUDENT_DATA[name] if counts[kind] > 0]
  videos = os.path.abspath(os.path.join(world_dir, "videos"))
  cfg = ml_collections.ConfigDict({
      "batch_size": s.batch_size, "seed": seed,
      "data": {"tokenizer": tokenizer_dir, "seq_len": max(s.buckets), "buckets": list(s.buckets),
               "num_frames": s.num_frames, "decode_size": s.decode_size, "num_workers": 0,
               "qa": [{"format": "star", "path": os.path.join(world_dir, "train.json"),
                       "video_root": videos, "weight": 1.0}],
               "cot": cot_files}})
  n_dev = s.num_devices or len(jax.devices())
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:n_dev])
  student = build.build_student(ml_collections.ConfigDict({
      "hf_dir": "", "architecture": "LlavaNextVideoForConditionalGeneration",
      "init": _student_init(config, tokenizer), "dtype": "float32", "param_dtype": "float32",
      "remat": False}), mesh=mesh, seed=seed)
  data = train_data.make_pipeline_data(cfg, student, tokenizer)
  optim = {"learning_rate": s.learning_rate, "warmup_ratio": s.warmup_ratio, "grad_clip": 1.0,
           "final_lr_ratio": 0.1}
  trainer = Trainer(student, make_optimizer(optim, s.steps), mesh=mesh,
                    trainable=trainable_filter(s.freeze_vision_tower),
                    rationale_weight=s.rationale_weight)
  result = train_loop(trainer, data, LoopConfig(total_steps=s.steps, checkpoint_every=s.steps,
                                                log_every=max(1, s.steps // 4)))
  data.close()
  os.makedirs(out, exist_ok=True)
  hf.save_pretrained(trainer.sync_model(), out)
  tokenizer.save_pretrained(out)
  info = {"name": name, "seed": seed, "steps": result.step, "seconds": round(result.seconds, 2),
          "final_loss": result.last_metrics.get("loss"),
          "label_loss": result.last_metrics.get("label_loss"),
          "rationale_loss": result.last_metrics.get("rationale_loss"),
          "cot_files": [c["path"] for c in cot_files], "path": out}
  _write_json(summary, info)
  _mark_done(out)
  return info


# -- stage 5: evaluation on the held-out test split ------------------------------------------------

def ground_truth_for(world_dir: str, records) -> list[tuple[dict, list]]:
  """(boxes by frame, event windows) of each record's clip, for rationale grounding."""
  from aotd_jax.data import toyworld
  gt = toyworld.load_ground_truth(world_dir)
  out = []
  for r in records:
    clip = gt[r.video_id]
    boxes = {t: [clip.boxes[t, i].tolist() for i in range(len(clip.names)) if clip.visible[t, i]]
             for t in range(clip.num_frames)}
    windows = [(e["start_frame"], e["end_frame"] + 1) for e in clip.events]
    out.append((boxes, windows))
  return out


def _run_student(config, model, tokenizer, records, world_dir, mode: str, max_new_tokens: int):
  from aotd_jax.eval import student as student_eval
  e = config.eval
  return student_eval.run_student(
      model, tokenizer, records, mode=mode, video_root=os.path.join(world_dir, "videos"),
      num_frames=e.num_frames, decode_size=e.decode_size, batch_size=e.batch_size,
      max_new_tokens=max_new_tokens)


def eval_stage(config, workdir: str, student: Mapping, world_dir: str) -> dict:
  """Accuracy (per type) on the test split, and rationale grounding on its first questions."""
  out = os.path.join(workdir, "eval", f"{os.path.basename(student['path'])}.json")

  def compute():
    from aotd_jax import hf
    from aotd_jax.eval import student as student_eval
    records = read_split(world_dir, "test")
    model, tokenizer = hf.from_pretrained(student["path"]), _load_tokenizer(student["path"])
    run = _run_student(config, model, tokenizer, records, world_dir, "answer",
                       config.eval.max_new_tokens)
    scores = student_eval.score(records, run.outputs)
    few = records[:config.eval.rationale_questions]
    rationales = _run_student(config, model, tokenizer, few, world_dir, "rationale",
                              config.eval.rationale_max_new_tokens).outputs
    grounding = student_eval.grounding(rationales, ground_truth_for(world_dir, few))
    return {"accuracy": scores["accuracy"], "per_type": scores["per_type"],
            "count": scores["count"], "split": "test", "qids": [r.qid for r in records],
            "outputs": run.outputs, "rationales": [{"qid": r.qid, "text": t}
                                                   for r, t in zip(few, rationales)],
            "grounding": grounding}
  return cached(out, compute)


# -- stage 6: efficiency, student vs agent on the same questions, each in its own process ---------

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
  records = read_split(world_dir, "test")[:config.efficiency.questions]
  if spec["system"] == "student":
    from aotd_jax import hf
    model, tokenizer = hf.from_pretrained(spec["student"]), _load_tokenizer(spec["student"])
    # The same batches twice: the first run compiles, the second is timed.
    _run_student(config, model, tokenizer, records, world_dir, "answer", config.eval.max_new_tokens)
    with efficiency.measure(len(records)) as eff:
      _run_student(config, model, tokenizer, records, world_dir, "answer", config.eval.max_new_tokens)
    return {**_own_peak(eff.to_dict()), "children_peak_mb": 0.0}
  out = spec["out_dir"]
  os.makedirs(out, exist_ok=True)
  with _sandbox(config) as sb:
    agent = build_agent(config, world_dir, spec["experts"], sb, os.path.join(out, "fallbacks.jsonl"))
    agent.process(records)  # warm-up: compiles the experts' and the generator's programs
    paths = job.JobPaths.for_shard(out, "test")
    for p in (paths.records, paths.stats):
      if os.path.exists(p):
        os.remove(p)
    with efficiency.measure(len(records)) as eff:
      stats = agent.run(records, paths, label="[agent] ", progress_every_s=60.0)
    children = _children_hwm_mb()
  return {**_own_peak(eff.to_dict()), "children_peak_mb": children, "records": paths.records,
          "agent_accuracy": stats.answer_passed / max(stats.total, 1)}


def _in_subprocess(spec: Mapping, out_path: str, timeout_s: float) -> dict:
  spec_path = out_path + ".spec.json"
  _write_json(spec_path, spec)
  code = ("import json, sys; from aotd_jax.demo import run; "
          "spec = json.load(open(sys.argv[1])); "
          "run._write_json(sys.argv[2], run.efficiency_child(spec))")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  proc = subprocess.run([sys.executable, "-c", code, spec_path, out_path], cwd=str(REPO_ROOT),
                        env=env, capture_output=True, text=True, timeout=timeout_s)
  if proc.returncode != 0:
    raise DemoError(f"efficiency run of the {spec['system']} failed (exit {proc.returncode}):\n"
                    f"{proc.stderr[-2000:]}")
  with open(out_path) as f:
    return json.load(f)


def efficiency_stage(config, workdir: str, world_dir: str, student_path: str,
                     experts_info: Mapping) -> dict:
  """Seconds per question and peak memory of the student and of the agent, same questions."""
  out = os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)

  def compute():
    spec = {"config": config.to_dict(), "workdir": workdir, "world_dir": world_dir,
            "student": student_path,
            "experts": dict(experts_info), "out_dir": os.path.join(out, "agent_test")}
    runs = {}
    for system in ("student", "agent"):
      s = dict(spec, system=system)
      path = os.path.join(out, f"efficiency_{system}.json")
      runs[system] = (_in_subprocess(s, path, config.efficiency.timeout_s)
                      if config.efficiency.subprocess else efficiency_child(s))
    st, ag = runs["student"], runs["agent"]
    agent_peak = ag["peak_mb"] + ag["children_peak_mb"]
    return {"questions": st["questions"], "agent_s_per_question": ag["seconds_per_question"],
            "student_s_per_question": st["seconds_per_question"], "agent_peak_mb": agent_peak,
            "student_peak_mb": st["peak_mb"], "agent_process_peak_mb": ag["peak_mb"],
            "agent_sandbox_peak_mb": ag["children_peak_mb"], "memory_kind": st["memory_kind"],
            "speedup": ag["seconds_per_question"] / max(st["seconds_per_question"], 1e-9),
            "memory_ratio": agent_peak / max(st["peak_mb"], 1e-9),
            "agent_accuracy": ag["agent_accuracy"], "agent_records": ag["records"]}
  return cached(os.path.join(out, "efficiency.json"), compute)


# -- the whole run ---------------------------------------------------------------------------------

def enable_compilation_cache(workdir: str) -> None:
  """JAX's persistent compilation cache in `workdir/jax_cache`: the three students share
  their train-step program, the efficiency processes reuse the evaluation's, reruns reuse all."""
  import jax
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _student_summary(evals: Sequence[Mapping]) -> dict:
  acc, acc_std = _mean_std([e["accuracy"] for e in evals])
  types = sorted({t for e in evals for t in e["per_type"]})
  per_type = {t: _mean_std([e["per_type"].get(t, 0.0) for e in evals])[0] for t in types}
  return {"accuracy": acc, "accuracy_std": acc_std, "per_type": per_type,
          "per_seed": [e["accuracy"] for e in evals], "qids": evals[0]["qids"],
          "grounding": evals[0]["grounding"], "count": evals[0]["count"],
          "rationales": evals[0]["rationales"]}


def run(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) every stage; writes and returns the report (see module docstring)."""
  from aotd_jax.demo import report as report_lib
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  if config.get("compilation_cache", True):
    enable_compilation_cache(workdir)
  timings = {}

  def stage(name, fn, *args):
    t = time.perf_counter()
    log(f"[demo] {name} ...")
    value = fn(*args)
    timings[name] = round(time.perf_counter() - t, 2)
    log(f"[demo] {name} done in {timings[name]:.1f}s")
    return value

  world_dir = stage("world", world_stage, config, workdir)
  tok = stage("tokenizer", tokenizer_stage, config, workdir, world_dir)
  experts_info = stage("experts", lambda: cached(
      os.path.join(workdir, "experts", "experts.json"),
      lambda: experts_stage(config, workdir, world_dir, tok["path"])))
  expert_scores = stage("subtasks", lambda: cached(
      os.path.join(workdir, "experts", "subtasks.json"),
      lambda: subtask_stage(config, workdir, world_dir, experts_info)))
  cots = stage("cots", cot_stage, config, workdir, world_dir, experts_info)
  evals: dict[str, list] = {}
  trained: dict[str, list] = {}
  for name in config.students.names:
    for seed in config.seeds:
      info = stage(f"student {name} seed {seed}", student_stage, config, workdir, name, seed,
                   world_dir, tok["path"], cots)
      trained.setdefault(name, []).append(info)
      evals.setdefault(name, []).append(
          stage(f"eval {name} seed {seed}", eval_stage, config, workdir, info, world_dir))
  main = "aotd" if "aotd" in trained else next(iter(trained))
  eff = stage("efficiency", efficiency_stage, config, workdir, world_dir,
              trained[main][0]["path"], experts_info)
  students = {n: {**_student_summary(e), "train": trained[n]} for n, e in evals.items()}
  rep = {
      "students": students,
      "cot": cots,
      "experts": expert_scores,
      "rationale_grounding": {k: students[main]["grounding"][k] for k in ("box_iou", "window_iou")},
      "efficiency": eff,
      "config": config.to_dict(),
      "tokenizer": tok,
      "test_qids": [r.qid for r in read_split(world_dir, "test")],
      "train_qids": [r.qid for r in read_split(world_dir, "train")],
      "timings": timings,
      "seconds": round(time.perf_counter() - t0, 2),
  }
  report_lib.write(rep, workdir)
  log(report_lib.table(rep))
  return rep
