"""Toy-world generation speed on one core: rendering alone vs the full world (mp4s + JSON).

python benchmarks/toyworld_cpu.py [--clips 100]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--clips", type=int, default=100)
  args = ap.parse_args()
  from aotd_jax.projects.toyworld import world as toyworld

  n = args.clips
  t0 = time.perf_counter()
  for i in range(n):
    toyworld.generate_clip(0, "train", i)
  render_s = time.perf_counter() - t0
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    paths = toyworld.generate_world(tmp, seed=0, num_clips=n)
    world_s = time.perf_counter() - t0
    import json

    questions = sum(len(json.load(open(p))) for p in paths.values())
  print(
    f"{n} clips (64x64, 24 frames): render + ground truth {render_s:.2f} s "
    f"({n / render_s:.0f} clips/s)"
  )
  print(
    f"full world ({questions} questions, mp4s, JSON): {world_s:.2f} s "
    f"({n / world_s:.0f} clips/s); mp4 + questions cost {world_s / render_s:.2f}x rendering"
  )


if __name__ == "__main__":
  main()
