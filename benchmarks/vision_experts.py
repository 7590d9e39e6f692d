r"""Tiny vision experts at the demo's quick size: training time and sub-task scores vs chance.

  python benchmarks/vision_experts.py [--workdir=/tmp/vision_bench]
  python benchmarks/vision_experts.py --rename_prob=0          # the grounder without renaming
  python benchmarks/vision_experts.py --grounder_features=clip --grounder_steps=150 \
      --grounder_extra_clips=0                                # the older CLIP grounder

Generates the toy world of `configs/toyworld/demo.py:quick` (60/10/20 clips), trains the detector
and the grounder (`aotd_jax.projects.toyworld.vision_experts`) as the quick demo does (the grounder on
the frame encoder's object states, `object_encoder.train_object_encoder`, trained first),
and scores them on the val and test splits with the sub-task harness next to the random
baseline measured in the same run. Prints seconds per trainer and the trained / random
ratio of each IoU.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vision_bench", "Scratch directory.")
_STEPS = flags.DEFINE_integer("steps", 150, "Detector steps (the quick config's).")
_ENCODER_STEPS = flags.DEFINE_integer("encoder_steps", 1000, "Frame encoder steps.")
_GR_FEATURES = flags.DEFINE_enum(
  "grounder_features", "encoder", ["encoder", "clip"], "The grounder's video features."
)
_GR_STEPS = flags.DEFINE_integer("grounder_steps", 500, "Grounder steps (budget unit).")
_GR_EXTRA = flags.DEFINE_integer("grounder_extra_clips", 200, "Rendered train clips added.")
_RENAME = flags.DEFINE_float("rename_prob", 1.0, "Object renaming probability (stage 2).")
_KEEP = flags.DEFINE_bool("keep", False, "Reuse trained experts in --workdir.")


def main(argv):
  del argv
  from aotd_jax.projects.toyworld import world as toyworld
  from aotd_jax.projects.toyworld import vision_experts as ve
  from aotd_jax.eval.subtasks import subtask_table
  from aotd_jax.projects.toyworld.oracle import PLUGIN
  from experts import subtasks

  w = _WORKDIR.value
  if not _KEEP.value and os.path.exists(w):
    shutil.rmtree(w)
  world = os.path.join(w, "world")
  if not os.path.exists(os.path.join(world, "world.json")):
    toyworld.generate_world(world, seed=0, num_train=60, num_val=10, num_test=20)
  seconds = {}
  t0 = time.perf_counter()
  ve.train_detector(world, os.path.join(w, "detector"), steps=_STEPS.value)
  seconds["detector"] = time.perf_counter() - t0
  features = None
  if _GR_FEATURES.value == "encoder":
    from aotd_jax.projects.toyworld import object_encoder

    t0 = time.perf_counter()
    features = object_encoder.train_object_encoder(
      world, os.path.join(w, "encoder"), steps=_ENCODER_STEPS.value, evaluate=False
    )
    seconds["encoder"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  ve.train_grounder(
    world,
    os.path.join(w, "grounder"),
    steps=_GR_STEPS.value,
    extra_clips=_GR_EXTRA.value,
    features=features,
    rename_prob=_RENAME.value,
  )
  seconds["grounder"] = time.perf_counter() - t0
  print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
  for split in ("val", "test"):
    config = subtasks.default_config(
      world,
      split=split,
      detector_path=os.path.join(w, "detector"),
      grounder_path=os.path.join(w, "grounder"),
    )
    config.candidates = {
      "random": {"detector": {"kind": "random"}, "grounder": {"kind": "random"}},
      "trained": config.candidates.trained,
    }
    t0 = time.perf_counter()
    res = subtasks.evaluate(config, plugins=[PLUGIN])
    print(f"--- {split} split")
    print(subtask_table(res))
    print(f"harness seconds: {time.perf_counter() - t0:.1f}")
    for name, key, role in (
      ("detector", "detection_iou", "detector"),
      ("grounder", "grounding_iou", "grounder"),
      ("grounder", "grounding_r50", "grounder"),
    ):
      tr, rnd = res["trained"][role][key], res["random"][role][key]
      print(
        f"{split} {name}: {key} {tr:.3f} vs random {rnd:.3f} (ratio {tr / max(rnd, 1e-9):.2f}x)"
      )


if __name__ == "__main__":
  app.run(main)
