"""An oracle teacher with a noise knob: gold programs on ground-truth experts, where a share
`noise` of the clips is annotated with another clip's ground truth.

The study (`aotd_jax.projects.toyworld.study`) uses it to separate "the distillation code works" from
"our toy experts are too weak": at noise 0 every expert answer is true, so every kept CoT is
right for the right reasons; at noise p the experts see the wrong clip for a share p of the
train clips (every tool, consistently), so those questions mostly get wrong answers (which
the answer filter drops) and sometimes the right letter for the wrong reasons (kept), as
with weak trained experts.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from aotd_jax.projects.toyworld.oracle import PLUGIN, ground_truth


def swapped_clips(video_ids, noise: float, seed: int) -> dict[str, str]:
  """{clip: the clip whose annotations stand in for it} for round(noise * n) of the clips.

  The chosen clips are permuted among themselves cyclically, so no clip keeps its own
  annotations; with one chosen clip it borrows a random other clip's.
  """
  if not 0.0 <= noise <= 1.0:
    raise ValueError(f"oracle teacher: noise={noise!r} must be in [0, 1]")
  ids = sorted(video_ids)
  k = int(round(noise * len(ids)))
  if k == 0:
    return {}
  if len(ids) < 2:
    raise ValueError(f"oracle teacher: noise={noise} needs at least 2 clips, got {len(ids)}")
  rng = np.random.default_rng([seed, 7])
  chosen = [ids[i] for i in rng.permutation(len(ids))[:k]]
  if k == 1:
    others = [v for v in ids if v != chosen[0]]
    return {chosen[0]: others[int(rng.integers(len(others)))]}
  return {v: chosen[(i + 1) % k] for i, v in enumerate(chosen)}


class NoisyGroundTruth:
  """`experts.backends.oracle.GroundTruth` whose swapped clips answer with another clip's
  frames (the same frame index; clips have equal lengths in the toy world)."""

  def __init__(self, gt, swap: Mapping[str, str]):
    self.gt, self.swap = gt, dict(swap)
    self.source = f"{gt.source} (noisy: {len(self.swap)} clips swapped)"

  @property
  def video_ids(self) -> list[str]:
    return self.gt.video_ids

  def frame(self, video_id: str | None, frame_id: int) -> dict:
    return self.gt.frame(self.swap.get(video_id, video_id), frame_id)


def noisy_oracle_tools(
  world_dir: str, noise: float, seed: int = 0, clips: Sequence[str] | None = None
) -> tuple[dict[str, Callable], dict[str, str]]:
  """The expert tools on the toy world's ground truth with `noise` of `clips` (default: all
  the world's clips) swapped among themselves (no tool cache: answers differ from the clean
  oracle's); returns (tools, swap)."""
  import experts as experts_lib
  from experts.backends import oracle

  gt = ground_truth(world_dir)
  known = set(gt.video_ids)
  clips = sorted(known if clips is None else set(clips))
  missing = [v for v in clips if v not in known]
  if missing:
    raise ValueError(f"oracle teacher: clips {missing[:3]} have no ground truth in {world_dir}")
  swap = swapped_clips(clips, noise, seed)
  noisy = NoisyGroundTruth(gt, swap)
  c = experts_lib.default_config()
  c.ground_truth.path = world_dir
  c.cache.enabled = False
  factories = {
    "detector": {"oracle": lambda section, ctx: oracle.OracleDetector(noisy)},
    "grounder": {"oracle": lambda section, ctx: oracle.OracleGrounder(noisy)},
    "action_recognizer": {"oracle": lambda section, ctx: oracle.OracleActions(noisy)},
    "video_qa": {"oracle": lambda section, ctx: oracle.OracleActions(noisy)},
  }
  return experts_lib.make_tools(c, factories=factories, plugins=[PLUGIN]), swap
