r"""Tiny vision experts at the demo's quick size: training time and sub-task scores vs chance.

  python benchmarks/vision_experts.py [--workdir=/tmp/vision_bench] [--steps=150]

Generates the toy world of `configs/demo.py:quick` (60/10/20 clips), trains the detector
and the grounder (`aotd_jax.demo.vision_experts`) and scores them on the test split with
the sub-task harness next to the random baseline measured in the same run. Prints seconds
per trainer (budget: 60-90 s each) and the trained / random ratio of each IoU.
"""
from __future__ import annotations

import os
import shutil
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/vision_bench", "Scratch directory.")
_STEPS = flags.DEFINE_integer("steps", 150, "Trainer steps (the quick config's).")
_KEEP = flags.DEFINE_bool("keep", False, "Reuse trained experts in --workdir.")


def main(argv):
  del argv
  from aotd_jax.data import toyworld
  from aotd_jax.demo import vision_experts as ve
  from aotd_jax.eval import subtasks
  w = _WORKDIR.value
  if not _KEEP.value and os.path.exists(w):
    shutil.rmtree(w)
  world = os.path.join(w, "world")
  if not os.path.exists(os.path.join(world, "world.json")):
    toyworld.generate_world(world, seed=0, num_train=60, num_val=10, num_test=20)
  seconds = {}
  for name, fn in (("detector", ve.train_detector), ("grounder", ve.train_grounder)):
    t0 = time.perf_counter()
    fn(world, os.path.join(w, name), steps=_STEPS.value)
    seconds[name] = time.perf_counter() - t0
  config = subtasks.default_config(world, split="test",
                                   detector_path=os.path.join(w, "detector"),
                                   grounder_path=os.path.join(w, "grounder"))
  config.candidates = {"random": {"detector": {"kind": "random"},
                                  "grounder": {"kind": "random"}},
                       "trained": config.candidates.trained}
  t0 = time.perf_counter()
  res = subtasks.evaluate(config)
  print(subtasks.subtask_table(res))
  print(f"harness seconds: {time.perf_counter() - t0:.1f}")
  for name, key, role in (("detector", "detection_iou", "detector"),
                          ("grounder", "grounding_iou", "grounder")):
    tr, rnd = res["trained"][role][key], res["random"][role][key]
    print(f"{name}: train {seconds[name]:.1f} s; {key} {tr:.3f} vs random {rnd:.3f} "
          f"(ratio {tr / max(rnd, 1e-9):.2f}x)")


if __name__ == "__main__":
  app.run(main)
