"""The demo's stages: world -> experts -> agent CoTs -> filter -> three students -> evaluation.

`run(config, workdir)` runs every stage of `configs/toyworld/demo.py` and returns the report dict
(also written as `workdir/report.json` and `report.html` by `aotd_jax.projects.toyworld.report`). Each
stage writes its output under `workdir` and a JSON summary last, so a rerun skips what is
done and a killed run resumes (the CoT job itself resumes question by question).

Layout of `workdir`: `world/` (STAR JSON + mp4s + ground truth), `experts/<role>/` (HF
directories, or nothing for oracle roles), `cots/` (job records, kept CoTs, unfiltered CoTs),
`students/<name>_s<seed>/` (HF directory + `train.json`), `eval/` (per-student outputs and
scores on the test split, efficiency), `report.{json,html}`.
"""

from __future__ import annotations

import collections
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections
import numpy as np

from aotd_jax.eval.subtasks import subtask_table
from aotd_jax.projects.toyworld import report as report_lib
from aotd_jax.projects.toyworld import stats
from aotd_jax.projects.toyworld import world as toyworld
from aotd_jax.projects.toyworld.agent import cot_stage, tools_config
from aotd_jax.projects.toyworld.common import (
  DemoError,
  cached,
  check_config_stamp,
  done,
  enable_compilation_cache,
  load_tokenizer,
  mark_done,
  read_split,
  run_student,
  student_format,
  trainer,
  write_json,
)
from aotd_jax.projects.toyworld.efficiency import efficiency_stage
from aotd_jax.projects.toyworld.oracle import PLUGIN
from experts import subtasks as harness_lib

CHANCE = 0.25  # four choices per toy-world question
EXPERT_ROLES = ("detector", "grounder", "qa", "program")


# -- stage 1: the world --------------------------------------------------------------------------


def world_stage(config, workdir: str) -> str:
  """Generates the toy world in `workdir/world` (once) and returns its directory."""
  out = os.path.join(workdir, "world")
  if not done(out):
    from aotd_jax.projects.toyworld import world as toyworld

    w = config.world
    toyworld.generate_world(
      out,
      seed=w.seed,
      num_train=w.num_train,
      num_val=w.num_val,
      num_test=w.num_test,
      size=w.size,
      fps=w.fps,
      seconds=w.seconds,
      questions_per_type=w.questions_per_type,
    )
    mark_done(out)
  return out


# -- stage 2: tokenizer and experts --------------------------------------------------------------


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
  build = trainer("language_experts", "build_tokenizer")
  use = _use_trained(config.experts.tokenizer, build, "tokenizer")
  if not done(out):
    if use:
      build(world_dir, out)
    else:
      from aotd_jax.data.toy_tokenizer import train_tokenizer

      texts = []
      for split in ("train", "val", "test"):
        for r in read_split(world_dir, split):
          texts += [r.question, " ".join(r.choices), r.meta.get("question_program", "")]
      train_tokenizer(
        texts + ["USER: ASSISTANT: (A) (B) (C) (D) frames [0, 0, 0, 0] in frame"],
        out,
        vocab_size=512,
      )
    mark_done(out)
  return {"path": out, "source": "language_experts" if use else "demo"}


def _size(section) -> dict:
  return dict(section.get("size", {}) or {})


def _grounder_features(section) -> str:
  """`experts.grounder.features`: "encoder" (default) or "clip"."""
  value = section.get("features", "encoder")
  if value not in ("encoder", "clip"):
    raise DemoError(f"config experts.grounder.features={value!r}: expected 'encoder' or 'clip'")
  return value


def encoder_stage(config, workdir: str, world_dir: str) -> dict:
  """The toy world's frame encoder (`object_encoder.train_object_encoder`): the frozen vision
  tower of the QA expert and of the students. {source: trained | none, path}."""
  section = config.experts.get("encoder")
  fn = trainer("object_encoder", "train_object_encoder")
  if section is None or not _use_trained(section, fn, "encoder"):
    return {"source": "none", "path": ""}
  path = os.path.join(workdir, "experts", "encoder")
  t0 = time.perf_counter()
  fn(world_dir, path, steps=int(section.steps), seed=int(config.world.seed), **_size(section))
  return {"source": "trained", "path": path, "seconds": round(time.perf_counter() - t0, 2)}


def experts_stage(config, workdir: str, world_dir: str, tokenizer_dir: str) -> dict:
  """Trains (or binds oracles for) each expert role; returns {role: {source, path}}, plus
  `encoder` (the frame encoder the QA expert and the students read frames with)."""
  trainers = {
    "detector": ("vision_experts", "train_detector"),
    "grounder": ("vision_experts", "train_grounder"),
    "qa": ("language_experts", "train_qa_expert"),
    "program": ("language_experts", "train_program_generator"),
  }
  use = {
    role: _use_trained(config.experts[role], trainer(*trainers[role]), role)
    for role in EXPERT_ROLES
  }  # every section checked before anything trains
  _grounder_features(config.experts.grounder)
  out = {"encoder": encoder_stage(config, workdir, world_dir)}
  for role in EXPERT_ROLES:
    section = config.experts[role]
    fn = trainer(*trainers[role])
    if not use[role]:
      out[role] = {"source": "oracle" if role != "program" else "none", "path": ""}
      continue
    path = os.path.join(workdir, "experts", role)
    t0 = time.perf_counter()
    kw = dict(steps=int(section.steps), seed=int(config.world.seed), **_size(section))
    if out["encoder"]["source"] == "trained":  # the frame encoder: QA tower, grounder features
      if role == "qa":
        kw["vision_init"] = out["encoder"]["path"]
      elif role == "grounder" and _grounder_features(section) == "encoder":
        kw["features"] = out["encoder"]["path"]
    if role in ("detector", "grounder"):
      fn(world_dir, path, **kw)
    else:
      fn(world_dir, tokenizer_dir, path, **kw)
    out[role] = {"source": "trained", "path": path, "seconds": round(time.perf_counter() - t0, 2)}
  return out


SUBTASK_KEYS = {  # report key -> (harness role, metric)
  "detection_iou": ("detector", "detection_iou"),
  "grounding_iou": ("grounder", "grounding_iou"),
  "action_top1": ("action_recognizer", "action_top1"),
  "qa_accuracy": ("video_qa", "qa_accuracy"),
  "program_accuracy": ("program_generator", "answer_accuracy"),
}


def subtask_stage(config, workdir: str, world_dir: str, experts_info: Mapping) -> dict:
  """The experts in use and the random baseline, scored by the sub-task harness
  (`experts.subtasks`, `aotd_jax.eval.subtasks`) on the held-out test split."""
  result: dict[str, Any] = {k: None for k in SUBTASK_KEYS}
  result.update(chance=CHANCE, sources={r: experts_info[r]["source"] for r in EXPERT_ROLES})
  encoder = experts_info.get("encoder", {})
  if encoder.get("source") == "trained":  # its own probe's val scores (object_encoder)
    from aotd_jax.projects.toyworld.object_encoder import read_done

    result["frame_encoder"] = read_done(encoder["path"]).get("val")
  if not config.experts.get("score", True):
    return result
  tools = tools_config(config, world_dir, experts_info).to_dict()
  ours = {role: tools[role] for role in ("detector", "grounder", "action_recognizer", "video_qa")}
  if experts_info["program"]["source"] == "trained":
    ours["program_generator"] = {
      "kind": "llama",
      "path": experts_info["program"]["path"],
      "prompt": "demo",
      "max_new_tokens": config.agent.max_new_tokens,
    }
  else:
    ours["program_generator"] = {"kind": "gold"}
  rand = {
    role: {"kind": "random", "seed": 0}
    for role in ("detector", "grounder", "action_recognizer", "video_qa")
  }
  rand["program_generator"] = {"kind": "random", "seed": 0}
  harness = ml_collections.ConfigDict(
    {
      "data": {
        "kind": "toyworld",
        "path": world_dir,
        "split": "test",
        "max_videos": int(config.experts.get("score_videos", 0)),
      },
      "candidates": {"ours": ours, "random": rand},
      "threshold": 0.1,
      "max_frames": 0,
      "num_action_choices": 4,
    }
  )
  scores = harness_lib.evaluate(harness, plugins=[PLUGIN])
  for key, (role, metric) in SUBTASK_KEYS.items():
    result[key] = scores["ours"].get(role, {}).get(metric)
    result[f"{key}_random"] = scores["random"].get(role, {}).get(metric)
  result["table"] = subtask_table(scores)
  return result


# -- stage 4: three students from the same init, same steps --------------------------------------

STUDENT_DATA = {"instruct": (), "aotd": ("filtered",), "aotd_unfiltered": ("unfiltered",)}


def _student_init(config, tokenizer) -> dict:
  init = json.loads(json.dumps(config.students.init.to_dict()))
  vocab = -(-len(tokenizer) // 8) * 8  # the tokenizer's ids fit; a multiple of 8 for the matmul
  init["text_config"]["vocab_size"] = vocab
  for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
    init["text_config"][key] = getattr(tokenizer, key)
  init["video_token_index"] = tokenizer.convert_tokens_to_ids("<video>")
  init["image_token_index"] = tokenizer.convert_tokens_to_ids("<image>")
  return init


def student_vision_dir(config, experts_info: Mapping) -> str:
  """The CLIP directory the students' vision tower starts from ("" for a random tower).

  `config.students.vision_init`: "" (random), "encoder" (the toy world's frame encoder,
  `experts/encoder`, shared with the QA expert: LLaVA students keep their pretrained CLIP),
  "grounder" (the grounder expert's toy CLIP, `experts/grounder/clip`) or a CLIP directory
  in HF layout.
  """
  choice = str(config.students.get("vision_init", "") or "")
  if choice not in ("grounder", "encoder"):
    return choice
  info = experts_info.get(choice, {})
  path = info.get("path") or ""
  path = os.path.join(path, "clip") if choice == "grounder" else path
  if info.get("source") != "trained" or not os.path.isfile(os.path.join(path, "config.json")):
    raise DemoError(
      f"config.students.vision_init={choice!r} needs the trained {choice} "
      f"({path or 'experts/' + choice}); its source is {info.get('source')!r}: "
      "set vision_init='' or train it"
    )
  return path


def student_base_dir(config, experts_info: Mapping) -> str:
  """The pretrained Video-LLM the students start from ("" for a fresh `students.init`).

  `config.students.init_from`: "" (fresh init, vision tower from `vision_init`), "qa" (the
  trained toy QA expert: as in the paper, where the students and the QA / action expert are
  the same pretrained LLaVA-NeXT-Video, here the toy world's own) or a HF LLaVA-NeXT-Video
  directory.
  """
  choice = str(config.students.get("init_from", "") or "")
  if choice != "qa":
    if choice and not os.path.isfile(os.path.join(choice, "config.json")):
      raise DemoError(
        f"config.students.init_from={choice!r}: no config.json there (expected "
        "'', 'qa' or a HF LLaVA-NeXT-Video directory)"
      )
    return choice
  info = experts_info.get("qa", {})
  if info.get("source") != "trained":
    raise DemoError(
      "config.students.init_from='qa' needs the trained QA expert; its source is "
      f"{info.get('source')!r}: set init_from='' or train it"
    )
  return info["path"]


def _train_pixels(config, world_dir: str, size: int, clips: int = 16) -> np.ndarray:
  """(clips * frames, 3, size, size) frames of the first train clips' question windows: the
  sample that `standardize_projector` reads the frozen tower's feature statistics from."""
  from aotd_jax.data import video, video_processing

  s, seen, out = config.students, set(), []
  for r in read_split(world_dir, "train"):
    if r.video_id in seen or len(seen) >= clips:
      continue
    seen.add(r.video_id)
    frames = video.read_frames(
      os.path.join(world_dir, "videos", f"{r.video_id}.mp4"), s.num_frames, size=s.decode_size
    )
    out.append(video_processing.preprocess_video(frames, shortest_edge=size, crop_size=size))
  return np.concatenate(out)


def shuffled_qa(world_dir: str, out_dir: str, copies: int, seed: int) -> list[str]:
  """STAR files of the train split with each question's choices shuffled (`copies` of them,
  written once to `out_dir`, shared by every student): the same questions with the answer
  at other letters, so a student learns which option is right rather than which letter."""
  paths = []
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(world_dir, "train.json")) as f:
    records = json.load(f)
  for k in range(copies):
    path = os.path.join(out_dir, f"train_shuffled{k}.json")
    paths.append(path)
    if os.path.exists(path):
      continue
    rng = np.random.default_rng([seed, k])
    out = []
    for r in records:
      order = rng.permutation(len(r["choices"]))
      choices = [dict(r["choices"][int(i)], choice_id=j) for j, i in enumerate(order)]
      out.append(dict(r, question_id=f"{r['question_id']}_shuffled{k}", choices=choices))
    write_json(path, out)
  return paths


PROTOCOLS = ("epochs", "steps")  # config.students.protocol


def student_protocol(s) -> str:
  """`config.students.protocol`: "epochs" (the paper's: `epochs` passes over the student's own
  data, QA and CoTs concatenated, so AoTD sees every QA example as often as Instruct, plus its
  CoTs, in more steps) or "steps" (every student `steps` steps, QA : CoT mixed by `cot_weight`)."""
  protocol = s.get("protocol", "steps")
  if protocol not in PROTOCOLS:
    raise DemoError(f"config.students.protocol={protocol!r}: expected one of {PROTOCOLS}")
  return protocol


def student_mixing(s) -> str:
  """`config.students.mixing`: "" follows the protocol ("concat_epoch" for "epochs", "weighted"
  for "steps"); "concat_epoch" or "weighted" (`aotd_jax.data.pipeline.mix_sources`) picks one
  under either protocol, e.g. the weighted mix over an epochs protocol's steps
  (docs/fidelity.md, "data mixing")."""
  from aotd_jax.data.pipeline import MIXINGS

  mixing = s.get("mixing", "") or (
    "concat_epoch" if student_protocol(s) == "epochs" else "weighted"
  )
  if mixing not in MIXINGS:
    raise DemoError(f"config.students.mixing={mixing!r}: expected '' or one of {MIXINGS}")
  return mixing


def student_steps(s, num_qa: int, num_cot: int) -> int:
  """Training steps of a student with `num_qa` QA and `num_cot` CoT examples under
  `config.students` (`steps`, or ceil(`epochs` * examples / `batch_size`))."""
  if student_protocol(s) == "steps":
    return int(s.steps)
  epochs = float(s.get("epochs", 0) or 0)
  if epochs <= 0:
    raise DemoError(
      f"config.students.epochs={s.get('epochs')!r}: protocol 'epochs' needs a "
      "positive number of epochs"
    )
  return max(1, -(-int(round(epochs * (num_qa + num_cot))) // int(s.batch_size)))


def student_stage(
  config,
  workdir: str,
  name: str,
  seed: int,
  world_dir: str,
  tokenizer_dir: str,
  cots: Mapping,
  vision_dir: str = "",
  base_dir: str = "",
) -> dict:
  """Distils student `name` (QA of the train split + its CoTs) and saves it as a HF directory.

  base_dir: a pretrained LLaVA-NeXT-Video the student starts from (`student_base_dir`);
  otherwise a fresh `students.init` whose vision tower comes from `vision_dir`, a CLIP
  directory (`student_vision_dir`), with its projector standardised on train frames
  (`qa_expert.standardize_projector`).
  """
  if name not in STUDENT_DATA:
    raise DemoError(
      f"config.students.names: unknown student {name!r}; expected some of {sorted(STUDENT_DATA)}"
    )
  out = os.path.join(workdir, "students", f"{name}_s{seed}")
  summary = os.path.join(out, "train.json")
  if done(out) and os.path.exists(summary):
    with open(summary) as f:
      return json.load(f)
  import jax

  from aotd_jax import hf, sharding
  from aotd_jax.train import build, data as train_data
  from aotd_jax.train.loop import LoopConfig, train_loop
  from aotd_jax.train.optim import make_optimizer, trainable_filter
  from aotd_jax.train.trainer import Trainer

  s = config.students
  tokenizer = load_tokenizer(tokenizer_dir)
  counts = {"filtered": cots["passed_judge"], "unfiltered": cots["unfiltered"]}
  protocol = student_protocol(s)
  mixing = student_mixing(s)
  epochs = mixing == "concat_epoch"  # every example once an epoch, no weights
  cot_files = [
    {"path": cots[f"{kind}_path"], "weight": 1.0 if epochs else s.cot_weight}
    for kind in STUDENT_DATA[name]
    if counts[kind] > 0
  ]
  videos = os.path.abspath(os.path.join(world_dir, "videos"))
  # QA: the train split as annotated plus `qa_shuffles` choice-shuffled copies, together
  # weighted as one source (the QA : CoT mix does not change).
  copies = int(s.get("qa_shuffles", 0))
  qa_paths = [os.path.join(world_dir, "train.json")] + shuffled_qa(
    world_dir, os.path.join(workdir, "students", "qa"), copies, int(config.world.seed)
  )
  qa = [
    {
      "format": "star",
      "path": p,
      "video_root": videos,
      "weight": 1.0 if epochs else 1.0 / len(qa_paths),
    }
    for p in qa_paths
  ]
  num_qa = len(read_split(world_dir, "train")) * len(qa_paths)
  num_cot = sum(counts[kind] for kind in STUDENT_DATA[name])
  steps = student_steps(s, num_qa, num_cot)
  cfg = ml_collections.ConfigDict(
    {
      "batch_size": s.batch_size,
      "seed": seed,
      "data": {
        "tokenizer": tokenizer_dir,
        "seq_len": max(s.buckets),
        "buckets": list(s.buckets),
        "num_frames": s.num_frames,
        "decode_size": s.decode_size,
        "num_workers": 0,
        "qa": qa,
        "cot": cot_files,
        "mixing": mixing,
        **student_format(config),
      },
    }
  )
  n_dev = s.num_devices or len(jax.devices())
  mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:n_dev])
  vision_dir = "" if base_dir else vision_dir
  student = build.build_student(
    ml_collections.ConfigDict(
      {
        "hf_dir": base_dir,
        "architecture": "LlavaNextVideoForConditionalGeneration",
        "init": _student_init(config, tokenizer),
        "vision_init": vision_dir,
        "compute": {"freeze_vision_tower": bool(s.freeze_vision_tower)},
      }
    ),
    mesh=mesh,
    seed=seed,
  )
  projector = {}
  if vision_dir:
    from aotd_jax.projects.toyworld.qa_expert import standardize_projector

    projector = standardize_projector(
      student, _train_pixels(config, world_dir, student.config.vision_config.image_size)
    )
  data = train_data.make_pipeline_data(cfg, student, tokenizer)
  optim = {
    "learning_rate": s.learning_rate,
    "warmup_ratio": s.warmup_ratio,
    "grad_clip": 1.0,
    "final_lr_ratio": 0.1,
  }
  trainer = Trainer(
    student,
    make_optimizer(optim, steps),
    mesh=mesh,
    trainable=trainable_filter(s.freeze_vision_tower),
    rationale_weight=s.rationale_weight,
    loss_normalization=s.get("loss_normalization", "per_part"),
  )
  result = train_loop(
    trainer,
    data,
    LoopConfig(total_steps=steps, checkpoint_every=steps, log_every=max(1, steps // 4)),
  )
  data.close()
  os.makedirs(out, exist_ok=True)
  hf.save_pretrained(trainer.sync_model(), out)
  tokenizer.save_pretrained(out)
  info = {
    "name": name,
    "seed": seed,
    "steps": result.step,
    "seconds": round(result.seconds, 2),
    "protocol": protocol,
    "mixing": mixing,
    "examples": {"qa": num_qa, "cot": num_cot},
    "loss_normalization": s.get("loss_normalization", "per_part"),
    **student_format(config),
    "rationale_weight": float(s.rationale_weight),
    "final_loss": result.last_metrics.get("loss"),
    "label_loss": result.last_metrics.get("label_loss"),
    "rationale_loss": result.last_metrics.get("rationale_loss"),
    "cot_files": [c["path"] for c in cot_files],
    "path": out,
    "vision_init": vision_dir,
    "init_from": base_dir,
    **projector,
  }
  write_json(summary, info)
  mark_done(out)
  return info


# -- stage 5: evaluation on the held-out test split ------------------------------------------------


def ground_truth_for(world_dir: str, records) -> list[tuple[dict, list]]:
  """(boxes by frame, event windows) of each record's clip, for rationale grounding."""
  gt = toyworld.load_ground_truth(world_dir)
  out = []
  for r in records:
    clip = gt[r.video_id]
    boxes = {
      t: [clip.boxes[t, i].tolist() for i in range(len(clip.names)) if clip.visible[t, i]]
      for t in range(clip.num_frames)
    }
    windows = [(e["start_frame"], e["end_frame"] + 1) for e in clip.events]
    out.append((boxes, windows))
  return out


SCORINGS = ("letters", "likelihood", "generate")  # config.eval.scoring


def eval_stage(config, workdir: str, student: Mapping, world_dir: str) -> dict:
  """Accuracy (per type) on the test split, and rationale grounding on its first questions."""
  out = os.path.join(workdir, "eval", f"{os.path.basename(student['path'])}.json")

  def compute():
    from aotd_jax import hf
    from aotd_jax.eval import student as student_eval

    e = config.eval
    scoring = e.get("scoring", "generate")
    if scoring not in SCORINGS:
      raise DemoError(f"config.eval.scoring={scoring!r}: expected one of {SCORINGS}")
    records = read_split(world_dir, "test")
    model, tokenizer = hf.from_pretrained(student["path"]), load_tokenizer(student["path"])
    extra = {}
    if scoring == "generate":  # greedy reply, option parsed from it
      run = run_student(config, model, tokenizer, records, world_dir, "answer", e.max_new_tokens)
    else:  # closed set: the best option letter, or the likeliest whole reply
      choose = (
        student_eval.choose_letters if scoring == "letters" else student_eval.choose_by_likelihood
      )
      run = choose(
        model,
        tokenizer,
        records,
        video_root=os.path.join(world_dir, "videos"),
        num_frames=e.num_frames,
        decode_size=e.decode_size,
        batch_size=e.batch_size,
        **student_format(config),
      )
      extra["option_logprobs"] = run.logprobs
    scores = student_eval.score(records, run.outputs)
    from aotd_jax.eval import metrics

    correct = [
      metrics.parse_choice(o, r.choices) == r.answer_index for r, o in zip(records, run.outputs)
    ]  # per question: paired comparisons
    few = records[: config.eval.rationale_questions]
    rationales = run_student(
      config, model, tokenizer, few, world_dir, "rationale", config.eval.rationale_max_new_tokens
    ).outputs
    grounding = student_eval.grounding(rationales, ground_truth_for(world_dir, few))
    return {
      "accuracy": scores["accuracy"],
      "per_type": scores["per_type"],
      "count": scores["count"],
      "split": "test",
      "qids": [r.qid for r in records],
      "correct": correct,
      "outputs": run.outputs,
      "rationales": [{"qid": r.qid, "text": t} for r, t in zip(few, rationales)],
      "grounding": grounding,
      "scoring": scoring,
      "letters": letter_histograms(records, run.outputs),
      **extra,
    }

  return cached(out, compute)


def letter_histograms(records, outputs: Sequence[str]) -> dict:
  """Per-letter counts of the gold answers and of the predictions (None: unparsable); a
  student stuck on one letter shows as one full bin."""
  from aotd_jax.data import conversation
  from aotd_jax.eval import metrics

  def letter(i):
    return "none" if i is None else conversation.option_letter(i)

  gold = [letter(r.answer_index) for r in records]
  pred = [letter(metrics.parse_choice(o, r.choices)) for r, o in zip(records, outputs)]
  return {
    "gold": dict(sorted(collections.Counter(gold).items())),
    "pred": dict(sorted(collections.Counter(pred).items())),
  }


def majority_baseline(world_dir: str) -> dict:
  """Test accuracy of always answering the train split's most frequent letter (a text-free,
  video-free baseline the students must beat besides chance)."""
  from aotd_jax.data import conversation

  train = collections.Counter(r.answer_index for r in read_split(world_dir, "train"))
  top = train.most_common(1)[0][0]
  test = [r.answer_index for r in read_split(world_dir, "test")]
  return {
    "letter": conversation.option_letter(top),
    "accuracy": float(np.mean([a == top for a in test])) if test else 0.0,
  }


# -- the whole run ---------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _student_summary(evals: Sequence[Mapping]) -> dict:
  acc, acc_std = _mean_std([e["accuracy"] for e in evals])
  types = sorted({t for e in evals for t in e["per_type"]})
  per_type = {t: _mean_std([e["per_type"].get(t, 0.0) for e in evals])[0] for t in types}
  return {
    "accuracy": acc,
    "accuracy_std": acc_std,
    "per_type": per_type,
    "per_seed": [e["accuracy"] for e in evals],
    "qids": evals[0]["qids"],
    "grounding": evals[0]["grounding"],
    "count": evals[0]["count"],
    "rationales": evals[0]["rationales"],
    "letters": evals[0].get("letters"),
  }


def paired_differences(evals: Mapping[str, Sequence[Mapping]]) -> dict:
  """{CoT student: its accuracy minus Instruct's, paired on the same seeds and test questions,
  with 95 % intervals (`aotd_jax.projects.toyworld.stats.compare`)}; {} without an Instruct student."""
  if "instruct" not in evals:
    return {}
  return {
    name: stats.compare([e["correct"] for e in runs], [e["correct"] for e in evals["instruct"]])
    for name, runs in evals.items()
    if name != "instruct"
  }


def run(config, workdir: str, *, log: Callable[[str], None] = print) -> dict:
  """Runs (or resumes) every stage; writes and returns the report (see module docstring)."""
  t0 = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  check_config_stamp(config, workdir)
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
  experts_info = stage(
    "experts",
    lambda: cached(
      os.path.join(workdir, "experts", "experts.json"),
      lambda: experts_stage(config, workdir, world_dir, tok["path"]),
    ),
  )
  expert_scores = stage(
    "subtasks",
    lambda: cached(
      os.path.join(workdir, "experts", "subtasks.json"),
      lambda: subtask_stage(config, workdir, world_dir, experts_info),
    ),
  )
  cots = stage("cots", cot_stage, config, workdir, world_dir, experts_info)
  evals: dict[str, list] = {}
  trained: dict[str, list] = {}
  base_dir = student_base_dir(config, experts_info)
  vision_dir = "" if base_dir else student_vision_dir(config, experts_info)
  for name in config.students.names:
    for seed in config.seeds:
      info = stage(
        f"student {name} seed {seed}",
        student_stage,
        config,
        workdir,
        name,
        seed,
        world_dir,
        tok["path"],
        cots,
        vision_dir,
        base_dir,
      )
      trained.setdefault(name, []).append(info)
      evals.setdefault(name, []).append(
        stage(f"eval {name} seed {seed}", eval_stage, config, workdir, info, world_dir)
      )
  main = "aotd" if "aotd" in trained else next(iter(trained))
  eff = stage(
    "efficiency",
    efficiency_stage,
    config,
    workdir,
    world_dir,
    trained[main][0]["path"],
    experts_info,
  )
  students = {n: {**_student_summary(e), "train": trained[n]} for n, e in evals.items()}
  paired = paired_differences(evals)
  rep = {
    "students": students,
    "cot": cots,
    "experts": expert_scores,
    "paired": paired,
    "rationale_grounding": {k: students[main]["grounding"][k] for k in ("box_iou", "window_iou")},
    "efficiency": eff,
    "config": config.to_dict(),
    "tokenizer": tok,
    "majority_letter": majority_baseline(world_dir),
    "test_qids": [r.qid for r in read_split(world_dir, "test")],
    "train_qids": [r.qid for r in read_split(world_dir, "train")],
    "timings": timings,
    "seconds": round(time.perf_counter() - t0, 2),
  }
  report_lib.write(rep, workdir)
  log(report_lib.table(rep))
  return rep
