r"""Evaluate a student the way the paper does.

  python -m launch.evaluate --student=W/checkpoints --tokenizer=TOK_DIR \
      --format=star --annotations=STAR_val.json --video_root=VIDEOS --num_frames=8 \
      [--mode=answer|rationale] [--scoring=generate|likelihood|both] [--limit=200] \
      [--out=W/eval.json]

NExT-QA: `--format=nextqa --annotations=val.csv --map=map_vid_vidorID.json` (the video-id map;
default: the map beside the CSV) `--video_root=NExTVideo`.

`--student` is a Hugging Face directory or an Orbax checkpoint directory written by
`launch.train` (its latest step). Prints accuracy (per question type) for multiple-choice data,
the normalised exact match for open-ended data, seconds per question and peak memory; with
`--mode=rationale` also the grounding of the rationales' boxes and windows against STAR's
annotated key frames (`situations`), in the frame numbers the student was trained to name
(`--frame_numbers=sampled`: its own frames 0..N-1, the real CoT configs'; `source`: source
frame ids); box IoU and window IoU, as the paper's grounding figure
(`aotd_jax/eval/star_grounding.py`).

`--scoring` (multiple-choice data, answer mode): `generate` parses the greedy reply;
`likelihood` is closed-set scoring, the option whose reply ("(B) text", or "B" with
`--answer_style=letter`) the student finds most likely (`eval.student.choose_by_likelihood`);
`both` reports the generated result with the likelihood one under "likelihood". A bad flag
value stops with one line naming the flag (exit 2).
"""
from __future__ import annotations

import json
import os

from absl import flags

from aotd_jax import hf
from aotd_jax.data import annotations
from aotd_jax.eval import student as student_eval
from aotd_jax.train.config_check import ConfigError
from launch import cli

_STUDENT = flags.DEFINE_string("student", None, "HF directory or Orbax checkpoint directory.")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer directory (default: --student).")
_FORMAT = flags.DEFINE_enum("format", "star", list(annotations.FORMATS), "Annotation format.")
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "Annotation file.")
_VIDEO_ROOT = flags.DEFINE_string("video_root", "", "Directory of the videos.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Frames per clip.")
_MODE = flags.DEFINE_enum("mode", "answer", list(student_eval.MODES), "Answer or rationale mode.")
_LIMIT = flags.DEFINE_integer("limit", 0, "Evaluate the first N questions (0: all).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Questions per generate call.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 0, "0: 16 in answer mode, 256 in rationale mode.")
_OUT = flags.DEFINE_string("out", "", "Write the results (and outputs) as JSON here.")
_FRAME_NUMBERS = flags.DEFINE_enum(
    "frame_numbers", "sampled", ["sampled", "source"],
    "How the student's rationales number frames (the CoT job's config.frame_numbers).")
_PROMPT_FORMAT = flags.DEFINE_enum("prompt_format", "plain", ["plain", "official"],
                                   "The prompt format the student was trained with "
                                   "(config.data.prompt_format; lnv7b: official).")
_MAP = flags.DEFINE_string("map", "", "NExT-QA video-id map (map_vid_vidorID.json; "
                           "--format=nextqa only; default: the map beside the CSV).")
_SCORING = flags.DEFINE_enum("scoring", "generate", ["generate", "likelihood", "both"],
                             "Multiple choice: parse the generated reply, pick the most likely "
                             "option, or both.")
_ANSWER_STYLE = flags.DEFINE_enum("answer_style", "letter_text", ["letter_text", "letter"],
                                  "The QA target the student was trained with "
                                  "(config.data.answer_style; lnv7b: letter); likelihood scoring.")
flags.mark_flags_as_required(["student", "annotations"])
flags.register_validator("num_frames", lambda v: v >= 1, "--num_frames must be >= 1")
flags.register_validator("batch_size", lambda v: v >= 1, "--batch_size must be >= 1")
flags.register_validator("limit", lambda v: v >= 0, "--limit must be >= 0 (0: all)")
flags.register_validator("max_new_tokens", lambda v: v >= 0, "--max_new_tokens must be >= 0")


def load_student(path: str):
  """A student from a HF directory or an Orbax checkpoint directory (latest step)."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return hf.from_pretrained(path)
  from aotd_jax.hf import orbax_io
  return orbax_io.restore_model(path)


def read_records(fmt: str, path: str, map_path: str = ""):
  """The evaluation records; `map_path` is NExT-QA's video map (ConfigError for another format)."""
  kw = {}
  if map_path:
    if fmt != "nextqa":
      raise ConfigError(f"--map={map_path} is NExT-QA's video map; --format is {fmt!r}")
    if not os.path.isfile(map_path):
      raise ConfigError(f"--map={map_path}: no such file")
    kw["map_path"] = map_path
  return annotations.read(fmt, path, **kw)


def star_grounding(records, rationales) -> dict:
  """Box / window IoU of the rationales against STAR's key frames (records with `situations`)."""
  from aotd_jax.eval import star_grounding as sg
  pairs = [(r, text) for r, text in zip(records, rationales) if r.meta.get("situations")]
  if not pairs:
    return {"box_iou": None, "window_iou": None, "questions": 0,
            "note": "no record carries STAR situations"}
  truths = []
  for r, _ in pairs:
    ids = sg.student_frame_ids(student_eval.video_file(r, _VIDEO_ROOT.value, ".mp4"),
                               _NUM_FRAMES.value, r.start, r.end)
    truths.append(sg.star_truth(r.meta["situations"], ids, _FRAME_NUMBERS.value))
  out = student_eval.grounding([t for _, t in pairs], truths)
  return {**out, "questions": len(pairs), "frame_numbers": _FRAME_NUMBERS.value}


def main(argv):
  del argv
  scoring = _SCORING.value
  if scoring != "generate" and _MODE.value != "answer":
    raise ConfigError(f"--scoring={scoring} scores answers; --mode={_MODE.value} needs "
                      "--scoring=generate")
  records = read_records(_FORMAT.value, _ANNOTATIONS.value, _MAP.value)
  if _LIMIT.value:
    records = records[:_LIMIT.value]
  if scoring != "generate" and not all(r.choices for r in records):
    raise ConfigError(f"--scoring={scoring} needs multiple-choice questions; "
                      f"{_ANNOTATIONS.value} has open-ended ones (use --scoring=generate)")
  model = load_student(_STUDENT.value)
  tokenizer = hf.load_tokenizer(_TOKENIZER.value or _STUDENT.value)
  common = dict(video_root=_VIDEO_ROOT.value, num_frames=_NUM_FRAMES.value,
                batch_size=_BATCH.value, prompt_format=_PROMPT_FORMAT.value)
  outputs = {}
  if scoring in ("generate", "both"):
    max_new = _MAX_NEW.value or (16 if _MODE.value == "answer" else 256)
    run = student_eval.run_student(model, tokenizer, records, mode=_MODE.value,
                                   max_new_tokens=max_new, **common)
    result = student_eval.score(records, run.outputs)
    result["efficiency"] = run.efficiency.to_dict()
    outputs["output"] = run.outputs
    if _MODE.value == "rationale":
      result["rationale_grounding"] = star_grounding(records, run.outputs)
  if scoring in ("likelihood", "both"):
    choice = student_eval.choose_by_likelihood(model, tokenizer, records,
                                               answer_style=_ANSWER_STYLE.value, **common)
    closed = student_eval.score(records, choice.outputs)
    closed["efficiency"] = choice.efficiency.to_dict()
    outputs["likelihood_output"] = choice.outputs
    if scoring == "likelihood":
      result = closed
    else:
      result["likelihood"] = closed
  result["scoring"] = scoring
  print(json.dumps(result, indent=1))
  if _OUT.value:
    rows = [{"qid": r.qid, **{k: v[i] for k, v in outputs.items()}} for i, r in enumerate(records)]
    with open(_OUT.value, "w") as f:
      json.dump({**result, "outputs": rows}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
