"""`VideoClip`: frames of a source video that remember which source frames they are.

Every tool takes and returns clips whose `frame_ids` are indices into the *original* video,
so the boxes and windows in an agent's trace refer to the source video however often a
program trims or filters. Clips made from one another share one frame store: the host array
is never copied, and the first expert that needs pixels on the accelerator moves the whole
source clip there once (`device_frames`); later calls of the same program only gather rows.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


class _FrameStore:
  """The source frames (T, H, W, 3) uint8, on the host and (lazily, once) on the device."""

  def __init__(self, frames):
    if isinstance(frames, jax.Array):
      self._device, self._host = frames, None
    else:
      self._device, self._host = None, np.asarray(frames)
    self._digest = None

  @property
  def host(self) -> np.ndarray:
    if self._host is None:
      self._host = np.asarray(self._device)
    return self._host

  def device(self) -> jax.Array:
    if self._device is None:
      self._device = jax.device_put(self._host)
    return self._device

  @property
  def shape(self) -> tuple:
    return tuple((self._host if self._host is not None else self._device).shape)

  @property
  def on_device(self) -> bool:
    return self._device is not None

  def digest(self) -> str:
    """A content hash, used as the cache identity of a clip that has no `video_id`."""
    if self._digest is None:
      self._digest = hashlib.sha1(np.ascontiguousarray(self.host).tobytes()).hexdigest()[:16]
    return self._digest


def _check_frames(frames) -> None:
  shape, dtype = tuple(frames.shape), np.dtype(frames.dtype)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"VideoClip frames must have shape (T, H, W, 3), got {shape}")
  if dtype != np.uint8:
    raise ValueError(f"VideoClip frames must be uint8, got {dtype}")


class VideoClip:
  """A run of frames from one source video.

  Attributes:
    frames: (T, H, W, 3) uint8 pixels (numpy; `device_frames()` gives them on the device).
    start_frame: the first source frame this clip covers (inclusive).
    end_frame: one past the last source frame it covers (exclusive, like Python ranges).
    fps: frames per second of the source frame numbering.
    video_id: the source video's id (used in cache keys and traces); None for anonymous pixels.
    frame_ids: (T,) source frame index of each row of `frames`; defaults to
      `start_frame, start_frame + 1, ...`. Filtering can make it non-contiguous.
    detections: boxes found in this clip by the tool that made it (`Find`), else None.
  """

  def __init__(
    self,
    frames,
    start_frame: int = 0,
    end_frame: int | None = None,
    fps: float = 30.0,
    video_id: str | None = None,
    frame_ids=None,
    detections=None,
    *,
    _store: _FrameStore | None = None,
    _rows: np.ndarray | None = None,
  ):
    if _store is None:
      if frames is None:
        raise ValueError("VideoClip needs frames")
      _check_frames(frames)
      _store, _rows = _FrameStore(frames), np.arange(frames.shape[0])
    self._store, self._rows = _store, _rows
    n = len(_rows)
    if frame_ids is None:
      frame_ids = np.arange(int(start_frame), int(start_frame) + n, dtype=np.int64)
    self.frame_ids = np.asarray(frame_ids, dtype=np.int64).reshape(-1)
    if len(self.frame_ids) != n:
      raise ValueError(f"VideoClip has {n} frames but {len(self.frame_ids)} frame_ids")
    if end_frame is None:
      end_frame = int(self.frame_ids[-1]) + 1 if n else int(start_frame)
    self.start_frame, self.end_frame = int(start_frame), int(end_frame)
    if self.end_frame < self.start_frame:
      raise ValueError(f"VideoClip end_frame {self.end_frame} < start_frame {self.start_frame}")
    if fps is None or not fps > 0:
      raise ValueError(f"VideoClip fps must be positive, got {fps}")
    self.fps, self.video_id, self.detections = float(fps), video_id, detections

  # -- pixels ---------------------------------------------------------------------------------

  def _run(self) -> slice | None:
    """The rows as one slice of the store when they are a run (first..last, step 1), else None."""
    rows = self._rows
    if len(rows) and rows[0] + len(rows) - 1 == rows[-1] and np.all(np.diff(rows) == 1):
      return slice(int(rows[0]), int(rows[-1]) + 1)
    return None

  @property
  def frames(self) -> np.ndarray:
    """The clip's frames on the host, (T, H, W, 3) uint8.

    A clip whose rows are one run of the source frames (a question clip, a trim, a window)
    gets a read-only view of the decoded frames, not a copy; other selections are gathered
    into a new array."""
    run = self._run()
    if run is None:
      return self._store.host[self._rows]
    view = self._store.host[run]
    view.flags.writeable = False
    return view

  def device_frames(self) -> jax.Array:
    """The clip's frames on the default device; the source moves there once per store."""
    run = self._run()
    if run is not None:
      return self._store.device()[run]
    return jnp.take(self._store.device(), jnp.asarray(self._rows), axis=0)

  @property
  def num_frames(self) -> int:
    return len(self._rows)

  def __len__(self) -> int:
    return self.num_frames

  @property
  def height(self) -> int:
    return int(self._store.shape[1])

  @property
  def width(self) -> int:
    return int(self._store.shape[2])

  @property
  def identity(self) -> str:
    """The video id, or a content hash of the source frames when there is none."""
    return self.video_id if self.video_id is not None else "sha1:" + self._store.digest()

  # -- views -----------------------------------------------------------------------------------

  def select(
    self,
    positions: Sequence[int],
    *,
    start_frame: int | None = None,
    end_frame: int | None = None,
    detections=None,
  ) -> "VideoClip":
    """A clip of some of this clip's rows (positions 0..T-1), sharing the frame store."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    ids = self.frame_ids[positions]
    if start_frame is None:
      start_frame = int(ids[0]) if len(ids) else self.start_frame
    if end_frame is None:
      end_frame = int(ids[-1]) + 1 if len(ids) else start_frame
    return VideoClip(
      None,
      start_frame=start_frame,
      end_frame=end_frame,
      fps=self.fps,
      video_id=self.video_id,
      frame_ids=ids,
      detections=detections,
      _store=self._store,
      _rows=self._rows[positions],
    )

  def positions_in(self, start: int, end: int) -> np.ndarray:
    """Row positions whose source frame id lies in [start, end)."""
    return np.nonzero((self.frame_ids >= start) & (self.frame_ids < end))[0]

  def seconds(self, frame_id: int) -> float:
    return float(frame_id) / float(self.fps)

  @property
  def times(self) -> np.ndarray:
    """(T,) seconds of each row after the clip's first row, from the source frame ids.

    A question clip keeps a few frames sampled from a long window at the source fps: its rows
    are `fps / stride` apart in time, not `1 / fps`, and models that read time (UniVTG) must
    use these, not the row count.
    """
    if not len(self.frame_ids):
      return np.zeros(0)
    return (self.frame_ids - self.frame_ids[0]) / self.fps

  @property
  def span_seconds(self) -> float:
    """Seconds from the first row's frame to the end of the last row's frame (0 if empty)."""
    if not len(self.frame_ids):
      return 0.0
    return float(self.frame_ids[-1] + 1 - self.frame_ids[0]) / self.fps

  def to_json(self) -> dict:
    """A compact description for traces: ids and ranges, never pixels."""
    ids = self.frame_ids
    contiguous = len(ids) == 0 or bool(np.all(np.diff(ids) == 1))
    out = {
      "type": "VideoClip",
      "video_id": self.video_id,
      "start_frame": self.start_frame,
      "end_frame": self.end_frame,
      "num_frames": self.num_frames,
      "fps": float(self.fps),
    }
    if not contiguous:
      out["frame_ids"] = [int(i) for i in ids]
    if self.detections is not None:
      out["detections"] = self.detections.to_json()
    return out

  def __repr__(self) -> str:
    return (
      f"VideoClip(video_id={self.video_id!r}, frames {self.start_frame}..{self.end_frame}, "
      f"num_frames={self.num_frames}, fps={self.fps:g})"
    )


FRAME_NUMBERS = ("source", "sampled")


def question_clip(
  path: str,
  *,
  start: float | None = None,
  end: float | None = None,
  max_frames: int = 24,
  video_id: str | None = None,
  frame_numbers: str = "source",
  frame_sampling: str = "ours",
) -> VideoClip:
  """The [start, end] seconds window of a video as a `VideoClip` of at most `max_frames` frames.

  `frame_numbers="source"`: the window's frames uniformly subsampled, numbered by the source
  video's frame ids (traces say "frame 1,187"). `"sampled"`: exactly the `max_frames` frames
  the student is given for this window (`aotd_jax.data.video.sample_indices`, the trainer's
  rule) numbered 0..max_frames-1, with the fps of that sampling, as the official AoTD numbers
  them: a rationale's "frames 3-9" then points at the student's own frames.

  `frame_sampling`: which frames, as the student's (`video.sample_indices`): "ours" takes the
  window's first and last frames; "official" is the release's `linspace(0, vlen, N,
  endpoint=False)` over the window, its clip's fps `N / window seconds` (the release's
  `1 / clip_len`). With "source" numbering it subsamples a window longer than `max_frames`.
  """
  from aotd_jax.data import video, video_processing

  if frame_numbers not in FRAME_NUMBERS:
    raise ValueError(f"question_clip: frame_numbers={frame_numbers!r} not in {FRAME_NUMBERS}")
  if frame_sampling not in video_processing.FRAME_SAMPLINGS:
    raise ValueError(
      f"question_clip: frame_sampling={frame_sampling!r} not in {video_processing.FRAME_SAMPLINGS}"
    )
  info = video.probe(path)
  if frame_numbers == "sampled":
    ids = video.sample_indices(
      info.num_frames, info.fps, max_frames, start, end, sampling=frame_sampling
    )
    if frame_sampling == "official":  # the frames stand for equal slices of the whole window
      window = video.sample_indices(info.num_frames, info.fps, 2, start, end)
      span_s = (int(window[-1]) + 1 - int(window[0])) / info.fps
    else:
      span_s = (int(ids[-1]) + 1 - int(ids[0])) / info.fps
    n = len(ids)
    # caches never mix two windows' (or two samplings') frame 0
    tag = f"@{start}-{end}/{n}" + ("/official" if frame_sampling == "official" else "")
    return VideoClip(
      video.decode_frames(path, ids),
      start_frame=0,
      end_frame=n,
      fps=n / span_s,
      video_id=None if video_id is None else f"{video_id}{tag}",
    )
  first = 0 if start is None else max(0, int(start * info.fps))
  last = info.num_frames if end is None else min(info.num_frames, int(end * info.fps))
  ids = np.arange(first, max(last, first + 1))
  if len(ids) > max_frames:
    if frame_sampling == "official":
      ids = ids[video_processing.sample_frame_indices(len(ids), max_frames, sampling="official")]
    else:
      ids = ids[np.linspace(0, len(ids) - 1, max_frames).round().astype(int)]
  return VideoClip(
    video.decode_frames(path, ids),
    start_frame=int(ids[0]),
    end_frame=int(ids[-1]) + 1,
    fps=info.fps,
    video_id=video_id,
    frame_ids=ids,
  )


def clip_args(
  video_path, max_frames: int = 24, frame_numbers: str = "source", frame_sampling: str = "ours"
):
  """`qa -> execute_command arguments`: the question's window of its video (`video_path(qa)`)
  as `video_clip` (`question_clip`), its text as `query`, its choices as `possible_answers`."""

  def make(qa) -> dict:
    clip = question_clip(
      video_path(qa),
      start=qa.start,
      end=qa.end,
      max_frames=max_frames,
      video_id=qa.video_id,
      frame_numbers=frame_numbers,
      frame_sampling=frame_sampling,
    )
    return {"video_clip": clip, "query": qa.question, "possible_answers": list(qa.choices)}

  return make
