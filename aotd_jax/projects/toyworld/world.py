"""The toy video world: procedural clips + STAR-format questions, written like real data.

`generate_world(out_dir, seed=0, ...)` writes, per split, a STAR-format JSON list
(`{split}.json`), one mp4 per clip (`videos/{video_id}.mp4`, PyAV), and the full ground truth
(`ground_truth.json`: per-frame boxes and events of every clip) plus `world.json` (the
settings and the held-out combinations). Everything is a pure function of the seed.

Held-out combinations: a few (colour, shape, action) triples never occur in train or val;
every test clip contains at least one, so the test split measures compositional transfer.
See `render` (clips, ground truth) and `questions` (questions, programs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from aotd_jax.projects.toyworld.questions import QUESTION_TYPES, event_text, make_questions
from aotd_jax.projects.toyworld.render import (
  ACTIONS,
  COLOURS,
  SHAPES,
  ClipSpec,
  ClipTruth,
  render_clip,
  sample_clip_spec,
)

__all__ = [
  "ACTIONS",
  "COLOURS",
  "SHAPES",
  "QUESTION_TYPES",
  "ClipSpec",
  "ClipTruth",
  "event_text",
  "generate_world",
  "heldout_combinations",
  "load_ground_truth",
  "make_questions",
  "render_clip",
  "sample_clip_spec",
  "write_mp4",
  "ALL_OBJECT_NAMES",
]

ALL_OBJECT_NAMES = [f"{c} {s}" for c in COLOURS for s in SHAPES]
SPLITS = ("train", "val", "test")


def heldout_combinations(seed: int, num: int = 4) -> list[tuple[str, str, str]]:
  """The (shape, colour, action) triples kept out of train/val for this seed."""
  rng = np.random.default_rng([seed, 7919])
  combos = [
    (s, c, a)
    for s in SHAPES
    for c in COLOURS
    for a in ACTIONS
    if not (s == "circle" and a == "spin")
  ]
  return [combos[int(i)] for i in sorted(rng.choice(len(combos), num, replace=False))]


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
  """Writes (T, H, W, 3) uint8 RGB frames as an H.264 mp4 (near-lossless, every frame kept)."""
  import av  # Local import: only writers need PyAV.

  with av.open(str(path), mode="w") as container:
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv444p"  # no chroma subsampling: small shapes keep their colour
    stream.options = {"crf": "10", "preset": "ultrafast"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _split_counts(num_clips, num_train, num_val, num_test) -> dict[str, int]:
  if num_clips is not None:
    if num_clips < 3:
      raise ValueError(f"num_clips={num_clips}: need at least 3 (one clip per split)")
    n_val = n_test = max(1, num_clips // 10)
    return {"train": num_clips - n_val - n_test, "val": n_val, "test": n_test}
  counts = {"train": num_train, "val": num_val, "test": num_test}
  for k, v in counts.items():
    if not isinstance(v, int) or v < 0:
      raise ValueError(f"num_{k}={v!r}: must be a non-negative int")
  return counts


def generate_clip(
  seed: int,
  split: str,
  index: int,
  *,
  size: int = 64,
  fps: int = 8,
  seconds: float = 3.0,
  heldout=None,
) -> tuple[np.ndarray, ClipTruth, ClipSpec]:
  """Renders clip `index` of `split` for `seed`: (frames, ground truth, spec)."""
  heldout = set(heldout if heldout is not None else heldout_combinations(seed))
  num_frames = int(round(fps * seconds))
  if num_frames < 10:
    raise ValueError(f"fps*seconds={fps}*{seconds}: need at least 10 frames per clip")
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  video_id = f"toy{seed}_{split}_{index:05d}"
  if split != "test":
    spec = sample_clip_spec(
      rng,
      size=size,
      num_frames=num_frames,
      fps=fps,
      allowed=lambda s, c, a: (s, c, a) not in heldout,
    )
  else:
    combos = sorted(heldout)
    for _ in range(50):
      shape, colour, _a = combos[int(rng.integers(len(combos)))]
      spec = sample_clip_spec(
        rng,
        size=size,
        num_frames=num_frames,
        fps=fps,
        prefer=lambda s, c, a: (s, c, a) in heldout,
        force_object=(shape, colour),
      )
      if any(
        (spec.objects[e.object].shape, spec.objects[e.object].colour, e.action) in heldout
        for e in spec.events
      ):
        break
    else:
      raise RuntimeError(f"could not place a held-out combination in {video_id}")
  frames, truth = render_clip(spec, video_id)
  return frames, truth, spec


def generate_world(
  out_dir: str | os.PathLike,
  *,
  seed: int = 0,
  num_clips: int | None = None,
  num_train: int = 80,
  num_val: int = 10,
  num_test: int = 10,
  size: int = 64,
  fps: int = 8,
  seconds: float = 3.0,
  questions_per_type: int = 1,
  write_videos: bool = True,
) -> dict[str, str]:
  """Writes the toy world to `out_dir`; returns {split: path of its STAR-format JSON}.

  `num_clips`, when given, overrides the per-split counts (10% val, 10% test). Also writes
  `ground_truth.json` ({video_id: ClipTruth.to_json()}) and `world.json` (settings,
  held-out combinations, clip ids per split).
  """
  if size < 32 or size % 2:
    raise ValueError(f"size={size}: must be an even number >= 32")
  if fps * seconds < 10:
    raise ValueError(f"fps*seconds={fps}*{seconds}: need at least 10 frames per clip")
  counts = _split_counts(num_clips, num_train, num_val, num_test)
  out = Path(out_dir)
  (out / "videos").mkdir(parents=True, exist_ok=True)
  heldout = heldout_combinations(seed)
  truths, paths, clip_ids = {}, {}, {}
  for split in SPLITS:
    records = []
    clip_ids[split] = []
    for i in range(counts[split]):
      frames, truth, _ = generate_clip(
        seed, split, i, size=size, fps=fps, seconds=seconds, heldout=heldout
      )
      if write_videos:
        write_mp4(out / "videos" / f"{truth.video_id}.mp4", frames, fps)
      qrng = np.random.default_rng([seed, SPLITS.index(split), i, 1])
      records += make_questions(truth, qrng, ALL_OBJECT_NAMES, per_type=questions_per_type)
      truths[truth.video_id] = truth.to_json()
      clip_ids[split].append(truth.video_id)
    paths[split] = str(out / f"{split}.json")
    with open(paths[split], "w") as f:
      json.dump(records, f)
  with open(out / "ground_truth.json", "w") as f:
    json.dump(truths, f)
  with open(out / "world.json", "w") as f:
    json.dump(
      {
        "seed": seed,
        "size": size,
        "fps": fps,
        "seconds": seconds,
        "heldout": [list(h) for h in heldout],
        "splits": clip_ids,
        "video_dir": "videos",
      },
      f,
      indent=1,
    )
  return paths


def load_ground_truth(path: str | os.PathLike) -> dict[str, ClipTruth]:
  """Reads `ground_truth.json` (or the world directory holding it) → {video_id: ClipTruth}."""
  p = Path(path)
  if p.is_dir():
    p = p / "ground_truth.json"
  try:
    with open(p) as f:
      data = json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f"{p}: no toy-world ground truth here (run generate_world)") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{p}: not valid JSON ({e})") from None
  out = {}
  for vid, d in data.items():
    try:
      out[vid] = ClipTruth.from_json(d)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{p}: record {vid!r} is malformed ({type(e).__name__}: {e})") from None
  return out


def video_path(world_dir: str | os.PathLike, video_id: str) -> str:
  """Path of a clip's mp4 inside a generated world."""
  return str(Path(world_dir) / "videos" / f"{video_id}.mp4")
