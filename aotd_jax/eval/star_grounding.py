"""Ground truth for rationale grounding on STAR: the annotated boxes and event frames of each
question, in the frame numbers the student's rationales use.

STAR annotates a question's key frames (`situations`: source frame id -> boxes, box labels,
actions) inside its window. A student trained on `frame_numbers="sampled"` CoTs names its own
frames 0..N-1 (the `N` frames `aotd_jax.data.video.sample_indices` takes from the window);
with `"source"` it names source frame ids. `star_truth` maps the annotations to either:
boxes by frame (each sampled frame takes the annotated frame nearest to it, within half the
sampling stride) and one window, the span of the annotated frames. The metrics are
`aotd_jax.eval.metrics.rationale_grounding` (box IoU, window IoU).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from aotd_jax.data import video

FRAME_NUMBERS = ("sampled", "source")


def star_truth(
  situations: Mapping[str, Mapping], frame_ids: Sequence[int], frame_numbers: str = "sampled"
) -> tuple[dict[int, list], list[tuple[int, int]]]:
  """(boxes by frame number, windows) of one STAR question.

  Args:
    situations: the record's STAR `situations` (source frame id string -> {"bbox": [...]}).
    frame_ids: the source frame id of each of the student's frames (`sample_indices`).
    frame_numbers: the numbering the rationales use, "sampled" (0..N-1) or "source".
  """
  if frame_numbers not in FRAME_NUMBERS:
    raise ValueError(f"frame_numbers={frame_numbers!r} not in {FRAME_NUMBERS}")
  annotated = sorted((int(f), s) for f, s in (situations or {}).items())
  ids = np.asarray(frame_ids, np.int64)
  if not annotated or not len(ids):
    return {}, []
  if frame_numbers == "source":
    boxes = {f: [list(map(float, b)) for b in s.get("bbox", [])] for f, s in annotated}
    return boxes, [(annotated[0][0], annotated[-1][0] + 1)]
  stride = float(np.median(np.diff(ids))) if len(ids) > 1 else 1.0
  fids = np.asarray([f for f, _ in annotated])
  boxes, hit = {}, []
  for k, fid in enumerate(ids):
    j = int(np.argmin(np.abs(fids - fid)))
    if abs(int(fids[j]) - int(fid)) <= max(stride / 2, 0.5):
      boxes[k] = [list(map(float, b)) for b in annotated[j][1].get("bbox", [])]
      hit.append(k)
  # the window: the student frames from the first to the last annotated key frame
  first = int(np.searchsorted(ids, fids[0], side="left"))
  last = int(np.searchsorted(ids, fids[-1], side="right")) - 1
  first, last = min(first, len(ids) - 1), max(min(last, len(ids) - 1), 0)
  return boxes, [(min(first, last), max(first, last) + 1)]


def student_frame_ids(
  video_path: str,
  num_frames: int,
  start: float | None,
  end: float | None,
  frame_sampling: str = "ours",
) -> np.ndarray:
  """The source frame ids of the student's `num_frames` frames of a question window (None: the
  whole video), picked by `frame_sampling` as the student's frames were."""
  info = video.probe(video_path)
  return video.sample_indices(
    info.num_frames, info.fps, num_frames, start, end, sampling=frame_sampling
  )
