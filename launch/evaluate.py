r"""Evaluate a student the way the paper does.

  python -m launch.evaluate --student=W/checkpoints --tokenizer=TOK_DIR \
      --format=star --annotations=STAR_val.json --video_root=VIDEOS --num_frames=8 \
      [--mode=answer|rationale] [--limit=200] [--out=W/eval.json]

`--student` is a Hugging Face directory or an Orbax checkpoint directory written by
`launch.train` (its latest step). Prints accuracy (per question type) for multiple-choice data,
the normalised exact match for open-ended data, seconds per question and peak memory; with
`--mode=rationale` also the grounding of the rationales' boxes and windows when the records
carry ground truth (`--ground_truth`: a toy-world `ground_truth.json`).
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from aotd_jax import hf
from aotd_jax.data import annotations
from aotd_jax.eval import student as student_eval

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
_PROMPT_FORMAT = flags.DEFINE_enum("prompt_format", "plain", ["plain", "official"],
                                   "The prompt format the student was trained with "
                                   "(config.data.prompt_format; lnv7b: official).")
flags.mark_flags_as_required(["student", "annotations"])


def load_student(path: str):
  """A student from a HF directory or an Orbax checkpoint directory (latest step)."""
  if os.path.isfile(os.path.join(path, "config.json")):
    return hf.from_pretrained(path)
  from aotd_jax.hf import orbax_io
  return orbax_io.restore_model(path)


def main(argv):
  del argv
  model = load_student(_STUDENT.value)
  tokenizer = hf.load_tokenizer(_TOKENIZER.value or _STUDENT.value)
  records = annotations.read(_FORMAT.value, _ANNOTATIONS.value)
  if _LIMIT.value:
    records = records[:_LIMIT.value]
  max_new = _MAX_NEW.value or (16 if _MODE.value == "answer" else 256)
  run = student_eval.run_student(model, tokenizer, records, mode=_MODE.value,
                                 video_root=_VIDEO_ROOT.value, num_frames=_NUM_FRAMES.value,
                                 batch_size=_BATCH.value, max_new_tokens=max_new,
                                 prompt_format=_PROMPT_FORMAT.value)
  result = student_eval.score(records, run.outputs)
  result["efficiency"] = run.efficiency.to_dict()
  print(json.dumps({k: v for k, v in result.items()}, indent=1))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({**result, "outputs": [{"qid": r.qid, "output": o} for r, o in zip(records, run.outputs)]},
                f, indent=1)


if __name__ == "__main__":
  app.run(main)
