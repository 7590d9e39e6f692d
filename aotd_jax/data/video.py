"""Video decoding with PyAV: N frames sampled uniformly inside a [start, end] window.

Frames are reached by seeking (to the keyframe at or before the next wanted frame, then
decoding forward) rather than decoding the whole file, so reading 8 frames of a 60 s clip
costs a few GOPs, not 1,800 decodes. STAR-style windows are honoured (the original AoTD
code ignored them). Results can be kept in a bounded LRU `FrameCache` (an object the caller
owns; there is no global cache).

Frame `i` covers the time [i / fps, (i + 1) / fps); a frame's index is computed from its
presentation timestamp, so seek-based and decode-everything reads agree frame for frame.
Any failure (missing, corrupt, truncated file, no video stream) raises `VideoDecodeError`
naming the file; pipelines count and skip those samples. Paths may be URLs (`gs://...`, any
`etils.epath` filesystem): PyAV then reads through a file object.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
from typing import Callable, Iterable, Iterator, Sequence

import av
import numpy as np

from aotd_jax.data import files, video_processing

Size = int | tuple[int, int] | None


class VideoDecodeError(Exception):
  """A video could not be decoded (missing, corrupt, truncated, no video stream)."""

  def __init__(self, path: str, why: str):
    super().__init__(f"{path}: {why}")
    self.path = path
    self.why = why


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """Stream facts used for sampling."""

  num_frames: int
  fps: float
  width: int
  height: int

  @property
  def duration(self) -> float:
    return self.num_frames / self.fps


@contextlib.contextmanager
def _opened(path: str) -> Iterator[av.container.InputContainer]:
  """The container of `path` (local, or a URL read through `etils.epath`), closed on exit."""
  if not files.exists(path):
    raise VideoDecodeError(path, "file not found")
  with files.open_binary(path) as source:
    try:
      container = av.open(source)
    except (av.FFmpegError, OSError, ValueError) as e:
      raise VideoDecodeError(path, f"cannot open ({e})") from e
    try:
      if not container.streams.video:
        raise VideoDecodeError(path, "no video stream")
      yield container
    finally:
      container.close()


def _info(path: str, container) -> VideoInfo:
  stream = container.streams.video[0]
  rate = stream.average_rate or stream.guessed_rate or stream.base_rate
  if not rate:
    raise VideoDecodeError(path, "unknown frame rate")
  fps = float(rate)
  n = stream.frames
  if not n:
    if stream.duration is not None and stream.time_base is not None:
      seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      seconds = container.duration / av.time_base
    else:
      raise VideoDecodeError(path, "unknown number of frames and duration")
    n = int(round(seconds * fps))
  if n <= 0:
    raise VideoDecodeError(path, "video has no frames")
  return VideoInfo(
    num_frames=int(n), fps=fps, width=stream.codec_context.width, height=stream.codec_context.height
  )


def probe(path: str | os.PathLike) -> VideoInfo:
  """Number of frames, fps and size of `path`'s first video stream (no decoding)."""
  path = os.fspath(path)
  with _opened(path) as container:
    return _info(path, container)


def sample_indices(
  num_frames_total: int,
  fps: float,
  n: int,
  start: float | None = None,
  end: float | None = None,
  *,
  sampling: str = "ours",
) -> np.ndarray:
  """`n` frame indices spread uniformly over the window [start, end) s (None: the video's ends).

  Frame `i` covers [i / fps, (i + 1) / fps). The window is clipped to the video; a window that
  starts past the end collapses onto the last frame (STAR windows sometimes overrun their
  video by a frame or two). With fewer frames in the window than `n`, indices repeat. The
  spreading rule is `video_processing.sample_frame_indices`: `sampling="ours"` takes the
  window's first and last frames (transformers' linspace), `"official"` the AoTD release's
  `linspace(0, vlen, n, endpoint=False)` over the window's frames (its last one never taken).
  """
  if n <= 0:
    raise ValueError(f"number of frames to sample must be positive, got {n}")
  last_frame = num_frames_total - 1
  first = 0 if start is None else min(max(int(math.floor(start * fps + 1e-6)), 0), last_frame)
  last = last_frame if end is None else int(math.ceil(end * fps - 1e-6)) - 1
  last = min(max(last, first), last_frame)
  return video_processing.sample_frame_indices(
    num_frames_total, n, start=first, end=last + 1, sampling=sampling
  )


def _size_kwargs(size: Size) -> dict:
  if size is None:
    return {}
  h, w = (size, size) if isinstance(size, int) else size
  return {"width": int(w), "height": int(h), "interpolation": "BILINEAR"}


def _to_rgb(frame: av.VideoFrame, size: Size) -> np.ndarray:
  return frame.to_ndarray(format="rgb24", **_size_kwargs(size))


class _Indexer:
  """Maps a decoded frame's pts to its frame index."""

  def __init__(self, stream, fps: float):
    self.tb = float(stream.time_base)
    self.t0 = stream.start_time or 0
    self.fps = fps

  def index(self, frame) -> int:
    pts = frame.pts if frame.pts is not None else frame.dts
    return int(round((pts - self.t0) * self.tb * self.fps))

  def pts(self, index: int) -> int:
    return int(self.t0 + round(index / self.fps / self.tb))


def _frames(container, stream) -> Iterator[av.VideoFrame]:
  yield from container.decode(stream)


def decode_frames(
  path: str | os.PathLike,
  indices: Sequence[int] | Callable[[VideoInfo], np.ndarray],
  *,
  size: Size = None,
  seek: bool = True,
  seek_gap: int | None = None,
) -> np.ndarray:
  """Decodes the frames at `indices` (any order, repeats allowed) -> (N, H, W, 3) uint8 RGB.

  `indices` may be a function of the `VideoInfo` (so the file is opened once). With `seek`,
  jumps to the keyframe before a wanted frame whenever it is more than `seek_gap` frames
  (default: one second) past the last decoded one; otherwise decodes everything from the
  start. Raises `VideoDecodeError` naming the file on any failure.
  """
  path = os.fspath(path)
  with _opened(path) as container:
    return _decode_frames(path, container, indices, size=size, seek=seek, seek_gap=seek_gap)


def _decode_frames(
  path: str, container, indices, *, size: Size, seek: bool, seek_gap: int | None
) -> np.ndarray:
  try:
    stream = container.streams.video[0]
    info = _info(path, container)
    if callable(indices):
      indices = indices(info)
    ix = _Indexer(stream, info.fps)
    gap = int(round(info.fps)) if seek_gap is None else seek_gap
    wanted = sorted(set(int(i) for i in indices))
    if wanted and (wanted[0] < 0 or wanted[-1] >= info.num_frames):
      raise VideoDecodeError(path, f"frame index out of range [0, {info.num_frames}): {wanted}")
    got: dict[int, np.ndarray] = {}
    it, current = _frames(container, stream), -1
    for target in wanted:
      if seek and target - current > gap:
        container.seek(ix.pts(target), stream=stream, backward=True, any_frame=False)
        it = _frames(container, stream)
      frame_array = None
      for frame in it:
        current = ix.index(frame)
        if current >= target:
          # A frame past the target means the target pts is missing (VFR or a gap): take the
          # nearest one after it, which is also what decoding everything would give.
          frame_array = _to_rgb(frame, size)
          break
      if frame_array is None:
        raise VideoDecodeError(
          path,
          f"truncated: stream ended at frame {current}, frame {target} of "
          f"{info.num_frames} was wanted",
        )
      got[target] = frame_array
      # Several wanted indices may map onto the frame just decoded.
      for later in wanted:
        if target < later <= current:
          got[later] = frame_array
  except av.FFmpegError as e:
    raise VideoDecodeError(path, f"decode failed ({e})") from e
  return (
    np.stack([got[int(i)] for i in indices]) if len(indices) else np.zeros((0, 0, 0, 3), np.uint8)
  )


def decode_all(path: str | os.PathLike, *, size: Size = None) -> np.ndarray:
  """Every frame of the video, in order (the reference that seeking must agree with)."""
  path = os.fspath(path)
  with _opened(path) as container:
    try:
      stream = container.streams.video[0]
      return np.stack([_to_rgb(f, size) for f in container.decode(stream)])
    except av.FFmpegError as e:
      raise VideoDecodeError(path, f"decode failed ({e})") from e
    except ValueError as e:  # np.stack of nothing
      raise VideoDecodeError(path, "no frames could be decoded") from e


class FrameCache:
  """Bounded LRU of decoded clips keyed by (path, (mtime, bytes), window, N, size, sampling)."""

  def __init__(self, max_items: int = 128, max_bytes: int | None = 1 << 30):
    self.max_items = max_items
    self.max_bytes = max_bytes
    self._data: collections.OrderedDict = collections.OrderedDict()
    self._bytes = 0
    self.hits = 0
    self.misses = 0

  def __len__(self) -> int:
    return len(self._data)

  def get(self, key) -> np.ndarray | None:
    value = self._data.get(key)
    if value is None:
      self.misses += 1
      return None
    self._data.move_to_end(key)
    self.hits += 1
    return value

  def put(self, key, value: np.ndarray) -> None:
    if key in self._data:
      self._bytes -= self._data.pop(key).nbytes
    value.flags.writeable = False  # shared between callers
    self._data[key] = value
    self._bytes += value.nbytes
    while self._data and (
      len(self._data) > self.max_items
      or (self.max_bytes is not None and self._bytes > self.max_bytes)
    ):
      _, old = self._data.popitem(last=False)
      self._bytes -= old.nbytes


def write_video(
  path: str | os.PathLike,
  frames: np.ndarray,
  fps: float | int = 25,
  *,
  codec: str = "libx264",
  gop: int = 12,
) -> None:
  """Writes (T, H, W, 3) uint8 RGB frames as an mp4 (tests, benchmarks, the toy world).

  `fps` may be fractional (e.g. 30000/1001); `gop` is the keyframe interval.
  """
  import fractions  # pylint: disable=g-import-not-at-top

  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(os.fspath(path), "w") as container:
    stream = container.add_stream(codec, rate=rate)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.codec_context.gop_size = gop
    for img in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


# Videos looked up before a long job starts (the trainer, the CoT job): when none of a source's
# first ones exists its videos are laid out otherwise than its reader expects, and every question
# would fail at its video; a few missing ones (a dataset's lost videos) are the job's to count.
VIDEOS_CHECKED = 8


def first_videos(
  paths: Iterable[str | None], n: int = VIDEOS_CHECKED
) -> tuple[list[str], list[str]]:
  """(the first `n` distinct paths among the first `4 n` given (None: a question without one),
  those of them that are not files)."""
  checked: list[str] = []
  for i, path in enumerate(paths):
    if len(checked) == n or i >= 4 * n:
      break
    if path and path not in checked:
      checked.append(path)
  return checked, [p for p in checked if not files.isfile(p)]


FRAME_FILES = (".jpg", ".jpeg", ".png")


def read_frame_folder(
  path: str,
  num_frames: int,
  *,
  fps: float,
  start: float | None = None,
  end: float | None = None,
  size: Size = None,
  sampling: str = "ours",
) -> np.ndarray:
  """`num_frames` RGB uint8 frames (N, H, W, 3) of a video stored as a folder of images
  (MVBench's TVQA clips: `00001.jpg`, ... at 3 per second), file `i` in name order covering
  [i / fps, (i + 1) / fps); sampled as `read_frames` samples a video file's frames.

  Raises:
    VideoDecodeError: naming the folder, when it holds no image or one does not read.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top

  names = sorted(
    n
    for n in (p.rpartition("/")[2] for p in files.glob(path, "*"))
    if n.lower().endswith(FRAME_FILES)
  )
  if not names:
    raise VideoDecodeError(path, f"a folder without frame images ({', '.join(FRAME_FILES)})")
  frames = []
  for i in sample_indices(len(names), fps, num_frames, start, end, sampling=sampling):
    try:
      with files.open_binary(files.join(path, names[i])) as f:
        image = PIL.Image.open(f).convert("RGB")
    except (OSError, ValueError) as e:
      raise VideoDecodeError(path, f"frame {names[i]}: {e}") from e
    if size is not None:
      h, w = (size, size) if isinstance(size, int) else size
      image = image.resize((int(w), int(h)), PIL.Image.BILINEAR)
    frames.append(np.asarray(image, np.uint8))
  return np.stack(frames)


def read_frames(
  path: str | os.PathLike,
  num_frames: int,
  *,
  start: float | None = None,
  end: float | None = None,
  size: Size = None,
  cache: FrameCache | None = None,
  seek: bool = True,
  sampling: str = "ours",
  folder_fps: float | None = None,
) -> np.ndarray:
  """`num_frames` RGB uint8 frames (N, H, W, 3) sampled uniformly inside [start, end] seconds.

  Args:
    path: the video file (or, with `folder_fps`, a folder of frame images).
    num_frames: N.
    start, end: the window in seconds (None: from the start / to the end).
    size: output size, `int` (square) or `(height, width)`; None keeps the video's size.
    cache: an optional `FrameCache`; hits return a read-only array.
    seek: False decodes everything up to the last wanted frame (the slow reference).
    sampling: which frames of the window, "ours" or "official" (`sample_indices`).
    folder_fps: the frame rate of `path` when it is a folder of frames (`read_frame_folder`);
      None: a folder is refused.

  Raises:
    VideoDecodeError: naming the file, when it is missing, corrupt or truncated.
  """
  path = os.fspath(path)
  if sampling not in video_processing.FRAME_SAMPLINGS:
    raise ValueError(
      f"read_frames: frame_sampling={sampling!r} is not one of {video_processing.FRAME_SAMPLINGS}"
    )
  if folder_fps and files.isdir(path):
    return read_frame_folder(
      path, num_frames, fps=folder_fps, start=start, end=end, size=size, sampling=sampling
    )
  key = None
  if cache is not None:
    try:
      stamp = files.stat_key(path)
    except OSError as e:
      raise VideoDecodeError(path, "file not found") from e
    key = (path, stamp, start, end, int(num_frames), size, sampling)
    hit = cache.get(key)
    if hit is not None:
      return hit
  if num_frames <= 0:
    raise ValueError(f"number of frames to sample must be positive, got {num_frames}")
  frames = decode_frames(
    path,
    lambda info: sample_indices(
      info.num_frames, info.fps, num_frames, start, end, sampling=sampling
    ),
    size=size,
    seek=seek,
  )
  if cache is not None:
    cache.put(key, frames)
  return frames
