"""Qwen2-VL's image and video preprocessing in numpy (transformers' `Qwen2VLImageProcessor` /
`Qwen2VLVideoProcessor`): dynamic resolution and patch flattening.

Each image or clip is resized (Pillow-exact bicubic, `video_processing.resize_bicubic`) to the
`smart_resize` size: both sides multiples of patch_size x merge_size (28), the area within
[min_pixels, max_pixels], the aspect ratio kept as closely as possible. It is then rescaled,
CLIP-normalised and cut into patches of temporal_patch_size (2) frames x 14 x 14 pixels,
flattened as (channels, frames, 14, 14) and ordered block-major (each 2 x 2 block of patches,
which the model's merger turns into one token, is consecutive). An image is one frame repeated;
a clip's frame count is padded to a multiple of 2 by repeating its last frame.

`preprocess_images` matches the PIL backend (`Qwen2VLImageProcessorPil`) bit for bit.
`preprocess_video` matches transformers' `Qwen2VLVideoProcessor` (sizes, the per-frame cap,
normalisation, temporal padding, patch order, grids) to float rounding when that processor
resizes with PIL; transformers resizes videos with torchvision, whose antialiased bicubic can
round a pixel one level differently (tests/test_qwen2_vl_processing.py says what is compared).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from aotd_jax.data import video_processing

# transformers' defaults (Qwen2VLImageProcessor.size / Qwen2VLVideoProcessor.size).
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 56 * 56, 28 * 28 * 1280
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 28 * 28 * 768
# `cap_pixels_per_frame`'s per-video budget in tokens (transformers' `max_video_tokens` default)
VIDEO_MAX_TOKENS = 128000


def smart_resize(
  height: int,
  width: int,
  factor: int = 28,
  min_pixels: int = IMAGE_MIN_PIXELS,
  max_pixels: int = IMAGE_MAX_PIXELS,
) -> tuple[int, int]:
  """(H, W) multiples of `factor` with min_pixels <= H * W <= max_pixels, aspect ratio kept."""
  if min(height, width) < 1:
    raise ValueError(f"smart_resize: empty image of size {(height, width)}")
  if max(height, width) / min(height, width) > 200:
    raise ValueError(
      f"smart_resize: absolute aspect ratio must be smaller than 200, got "
      f"{max(height, width) / min(height, width)}"
    )
  h_bar = round(height / factor) * factor
  w_bar = round(width / factor) * factor
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt((height * width) / max_pixels)
    h_bar = max(factor, math.floor(height / beta / factor) * factor)
    w_bar = max(factor, math.floor(width / beta / factor) * factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = math.ceil(height * beta / factor) * factor
    w_bar = math.ceil(width * beta / factor) * factor
  return h_bar, w_bar


def patchify(
  frames: np.ndarray, *, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> tuple[np.ndarray, tuple[int, int, int]]:
  """(T, C, H, W) normalised frames -> ((t*h*w, C*tp*P*P) patches, (t, h, w) grid)."""
  frames = np.asarray(frames, np.float32)
  n, c, hh, ww = frames.shape
  if hh % (patch_size * merge_size) or ww % (patch_size * merge_size):
    raise ValueError(
      f"patchify: frame size {(hh, ww)} is not a multiple of "
      f"patch_size * merge_size = {patch_size * merge_size}"
    )
  if n % temporal_patch_size:
    pad = temporal_patch_size - n % temporal_patch_size
    frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
  t, gh, gw = frames.shape[0] // temporal_patch_size, hh // patch_size, ww // patch_size
  x = frames.reshape(
    t,
    temporal_patch_size,
    c,
    gh // merge_size,
    merge_size,
    patch_size,
    gw // merge_size,
    merge_size,
    patch_size,
  )
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(t * gh * gw, c * temporal_patch_size * patch_size * patch_size), (t, gh, gw)


def _resize_normalize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  x = video_processing.resize_bicubic(frames, height, width)
  return video_processing.normalize(x)


def preprocess_images(
  images: Sequence[np.ndarray],
  *,
  min_pixels: int = IMAGE_MIN_PIXELS,
  max_pixels: int = IMAGE_MAX_PIXELS,
  patch_size: int = 14,
  merge_size: int = 2,
  temporal_patch_size: int = 2,
) -> dict[str, np.ndarray]:
  """(H, W, 3) uint8 images -> {"pixel_values": (patches, 3*2*14*14) float32,
  "image_grid_thw": (N, 3) int64}, as transformers' `Qwen2VLImageProcessor` (PIL backend)."""
  patches, grids = [], []
  for i, image in enumerate(images):
    image = video_processing._check_pixels(image, f"images[{i}]", 3, "(H, W, 3)")  # pylint: disable=protected-access
    h, w = smart_resize(
      image.shape[0], image.shape[1], patch_size * merge_size, min_pixels, max_pixels
    )
    x = _resize_normalize(image, h, w)[None]
    x = np.repeat(x, temporal_patch_size, axis=0)  # an image is one frame, repeated
    p, grid = patchify(
      x, patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size
    )
    patches.append(p)
    grids.append(grid)
  return {"pixel_values": np.concatenate(patches), "image_grid_thw": np.asarray(grids, np.int64)}


def video_size(
  num_frames: int,
  height: int,
  width: int,
  *,
  min_pixels: int = VIDEO_MIN_PIXELS,
  max_pixels: int = VIDEO_MAX_PIXELS,
  factor: int = 28,
  temporal_patch_size: int = 2,
  cap_pixels_per_frame: bool = False,
  max_video_tokens: int = VIDEO_MAX_TOKENS,
) -> tuple[int, int]:
  """The (H, W) transformers' video processor resizes a clip's frames to; with
  `cap_pixels_per_frame` (qwen-vl-utils' rule) each frame also gets at most an even share of
  `max_video_tokens`, floored at 1.05 x min_pixels."""
  if cap_pixels_per_frame:
    total = int(max_video_tokens * factor * factor * 0.9)
    max_pixels = max(
      min(max_pixels, total * temporal_patch_size // num_frames), int(min_pixels * 1.05)
    )
  return smart_resize(height, width, factor, min_pixels, max_pixels)


def preprocess_video(
  frames: np.ndarray,
  *,
  size: tuple[int, int] | None = None,
  min_pixels: int = VIDEO_MIN_PIXELS,
  max_pixels: int = VIDEO_MAX_PIXELS,
  patch_size: int = 14,
  merge_size: int = 2,
  temporal_patch_size: int = 2,
  cap_pixels_per_frame: bool = False,
  max_video_tokens: int = VIDEO_MAX_TOKENS,
) -> dict[str, np.ndarray]:
  """(T, H, W, 3) uint8 frames -> {"pixel_values_videos": (patches, 3*2*14*14) float32,
  "video_grid_thw": (1, 3) int64}; `size` (H, W) overrides the `video_size` rule (a fixed
  training size)."""
  frames = video_processing._check_pixels(frames, "frames", 4, "(T, H, W, 3)")  # pylint: disable=protected-access
  if size is None:
    size = video_size(
      frames.shape[0],
      frames.shape[1],
      frames.shape[2],
      min_pixels=min_pixels,
      max_pixels=max_pixels,
      factor=patch_size * merge_size,
      temporal_patch_size=temporal_patch_size,
      cap_pixels_per_frame=cap_pixels_per_frame,
      max_video_tokens=max_video_tokens,
    )
  x = _resize_normalize(frames, *size)
  p, grid = patchify(
    x, patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size
  )
  return {"pixel_values_videos": p, "video_grid_thw": np.asarray([grid], np.int64)}


def sample_frame_indices(
  total_frames: int,
  *,
  num_frames: int | None = None,
  fps: float | None = None,
  video_fps: float | None = None,
  temporal_patch_size: int = 2,
  min_frames: int = 4,
  max_frames: int = 768,
) -> np.ndarray:
  """transformers' `Qwen2VLVideoProcessor.sample_frames`: `num_frames` (rounded to a multiple of
  temporal_patch_size) or `fps` frames a second of a `video_fps` video, at
  arange(0, total, total / n) (truncated), int64."""
  if num_frames is not None and fps is not None:
    raise ValueError("sample_frame_indices: num_frames and fps are mutually exclusive")
  if num_frames is not None:
    num_frames = round(num_frames / temporal_patch_size) * temporal_patch_size
  elif fps is not None:
    if not video_fps:
      raise ValueError("sample_frame_indices: sampling by fps needs the video's fps (video_fps)")
    most = math.floor(min(max_frames, total_frames) / temporal_patch_size) * temporal_patch_size
    num_frames = total_frames / video_fps * fps
    num_frames = min(max(num_frames, min_frames), most, total_frames)
    num_frames = math.floor(num_frames / temporal_patch_size) * temporal_patch_size
  if num_frames is None:
    return np.arange(total_frames, dtype=np.int64)
  if not 0 < num_frames <= total_frames:
    raise ValueError(
      f"sample_frame_indices: cannot sample {num_frames} frames of a {total_frames}-frame video"
    )
  return (
    np.arange(0, total_frames, total_frames / num_frames, dtype=np.float64)
    .astype(np.int32)
    .astype(np.int64)
  )
