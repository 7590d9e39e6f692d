r"""Score candidate experts per sub-task (AoTD's first step) and print the paper's table.

  python -m launch.eval_subtasks --data=W/world --split=val \
      [--detector=W/experts/detector] [--grounder=W/experts/grounder] [--out=W/subtasks.json]
  python -m launch.eval_subtasks --config=my_subtasks.py   # get_config() -> harness config

Without `--config`, the candidates are the ground-truth oracle, a random baseline (chance)
and, as `trained`, whichever model directories are given. A config file gives full control:
`data` (kind toyworld|star, path, split, video_dir, classes_dir, max_videos, blank_frames) and
`candidates` ({name: experts-style sections: detector, grounder, action_recognizer,
video_qa with `kind` oracle|random|owlv2|univtg|llava, and program_generator with kind
gold|random|llama}); see `experts.subtasks` (the toy world's kind: its plugin,
`aotd_jax.projects.toyworld.oracle.PLUGIN`).
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from aotd_jax.data import files
from aotd_jax.eval.subtasks import subtask_table
from aotd_jax.projects.toyworld.oracle import PLUGIN as TOYWORLD
from aotd_jax.train.config_check import ConfigError
from experts import subtasks
from launch import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Harness config file (optional).")
_DATA = flags.DEFINE_string("data", "", "Toy-world directory or STAR JSON file.")
_KIND = flags.DEFINE_enum("kind", "toyworld", ["toyworld", "star"], "Data kind.")
_SPLIT = flags.DEFINE_string("split", "val", "Toy-world split.")
_DETECTOR = flags.DEFINE_string("detector", "", "OWLv2 HF directory (trained candidate).")
_GROUNDER = flags.DEFINE_string("grounder", "", "train_grounder output directory.")
_LLAMA = flags.DEFINE_string("llama", "", "Program-generator HF directory.")
_LLAVA = flags.DEFINE_string("llava", "", "LLaVA-NeXT-Video HF directory (actions, QA).")
_VIDEO_DIR = flags.DEFINE_string("video_dir", "", "STAR: directory of the <video_id>.mp4 videos.")
_CLASSES_DIR = flags.DEFINE_string("classes_dir", "", "STAR: the class-list directory.")
_OUT = flags.DEFINE_string("out", "", "Write the results as JSON here.")


def missing_paths(
  *, data: str, detector: str, grounder: str, llama: str, llava: str, video_dir: str
) -> list[str]:
  """What the command-line candidates name that is not there, each as `--flag=path (what)`; []
  when everything is. `--grounder` is a directory holding `univtg.ckpt` and `clip/`."""
  missing = []
  for flag, path, what in (
    ("data", data, "the annotations"),
    ("detector", detector, "an OWLv2 directory"),
    ("llama", llama, "a program-generator directory"),
    ("llava", llava, "a LLaVA-NeXT-Video directory"),
    ("video_dir", video_dir, "the videos"),
  ):
    if path and not os.path.exists(path):
      missing.append(f"--{flag}={path} ({what})")
  if grounder:
    need = [n for n in ("univtg.ckpt", "clip") if not os.path.exists(os.path.join(grounder, n))]
    if need:
      missing.append(
        f"--grounder={grounder} (a directory holding univtg.ckpt and clip/, as train_grounder "
        f"writes; link the released checkpoint and the CLIP directory into one; missing: "
        f"{', '.join(need)})"
      )
  return missing


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    if not _DATA.value:
      raise app.UsageError("give --config or --data")
    missing = missing_paths(
      data=_DATA.value,
      detector=_DETECTOR.value,
      grounder=_GROUNDER.value,
      llama=_LLAMA.value,
      llava=_LLAVA.value,
      video_dir=_VIDEO_DIR.value,
    )
    if missing:
      raise ConfigError(f"not found: {'; '.join(missing)}")
    config = subtasks.default_config(
      _DATA.value,
      split=_SPLIT.value,
      kind=_KIND.value,
      detector_path=_DETECTOR.value,
      grounder_path=_GROUNDER.value,
      llama_path=_LLAMA.value,
      llava_path=_LLAVA.value,
    )
    if _VIDEO_DIR.value:
      config.data.video_dir = _VIDEO_DIR.value
    if _CLASSES_DIR.value:
      config.data.classes_dir = _CLASSES_DIR.value
  if _OUT.value:
    cli.out_file(_OUT.value)
  results = subtasks.evaluate(config, plugins=[TOYWORLD])
  print(subtask_table(results))
  if _OUT.value:
    files.write_text(_OUT.value, json.dumps(results, indent=1))


if __name__ == "__main__":
  cli.run(main)
