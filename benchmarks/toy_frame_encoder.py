r"""Can a tiny CLIP ViT tell *which* toy-world object is where, on held-out test clips?

  python benchmarks/toy_frame_encoder.py                       # the quick world, ~2-3 min on 2 cores
  python benchmarks/toy_frame_encoder.py --world=W/world --extra_clips=1000 --steps=1500

Trains the demo's frame encoder (`aotd_jax.projects.toyworld.object_encoder.train_object_encoder`: our
`CLIPVisionTransformer`, 64 px, patch 8, 2 layers, width 64, with a dense per-patch loss —
which object's box covers the patch, or none, and what it is doing) on the world's train
clips plus `extra_clips` rendered from the train split (never a val / test clip), then
scores the train, val and test splits with its probe: per-patch object identity (chance
1/12) and per-frame presence of each named object ("some patch says red circle") against
the "always absent" baseline, all measured in the same run. Without `--world` it generates
the quick demo's world (`configs/toyworld/demo.py:quick`) in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument(
    "--world", default="", help="a generated toy world (default: a new quick one)"
  )
  parser.add_argument("--extra_clips", type=int, default=600)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--lr", type=float, default=3e-3)
  parser.add_argument("--batch", type=int, default=64)
  args = parser.parse_args(argv)

  import jax
  from aotd_jax.projects.toyworld import world as toyworld
  from aotd_jax.projects.toyworld import object_encoder as oe
  from configs.toyworld.demo import get_config

  with tempfile.TemporaryDirectory() as tmp:
    world = args.world
    if not world:
      world = os.path.join(tmp, "world")
      w = get_config("quick").world
      toyworld.generate_world(
        world,
        seed=w.seed,
        num_train=w.num_train,
        num_val=w.num_val,
        num_test=w.num_test,
        size=w.size,
        fps=w.fps,
        seconds=w.seconds,
        questions_per_type=w.questions_per_type,
      )
    start = time.perf_counter()
    out = oe.train_object_encoder(
      world,
      os.path.join(tmp, "encoder"),
      steps=args.steps,
      extra_clips=args.extra_clips,
      learning_rate=args.lr,
      batch_size=args.batch,
      evaluate=("train", "val", "test"),
    )
    info = oe.read_done(out)
    print(
      f"machine: {os.cpu_count()} CPUs, jax {jax.__version__}; world {world}: "
      f"{info['train_clips'] - args.extra_clips} + {args.extra_clips} rendered train clips "
      f"({info['train_frames']} frames)"
    )
    print(
      f"trained {args.steps} steps in {info['seconds']:.0f} s (rendering "
      f"{info['render_seconds']:.0f} s; loss {info['first_loss']:.3f} -> "
      f"{info['final_loss']:.3f}); {time.perf_counter() - start:.0f} s with scoring"
    )
    for split in ("train", "val", "test"):
      s = info.get(split)
      if not s:
        continue
      print(
        f"{split:5s} ({s['frames']} frames): object under a patch {s['identity']:.3f} "
        f"(chance {s['identity_chance']:.3f}: {s['identity'] / s['identity_chance']:.1f}x); "
        f"object in frame {s['presence']:.3f} (always absent "
        f"{s['presence_always_absent']:.3f}), recall {s['presence_recall']:.3f}"
      )


if __name__ == "__main__":
  main()
