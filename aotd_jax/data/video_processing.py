"""Video and image preprocessing for the student (LLaVA-NeXT-Video), in numpy.

Matches transformers' PIL-backend processors bit for bit before normalisation: frames are
resized along the shortest edge with Pillow's antialiased bicubic filter (re-implemented here
in fixed point, as Pillow does it on uint8), centre cropped, rescaled by 1/255 and normalised
with a per-channel mean/std (CLIP's by default; a student's comes from its checkpoint's
processor files or its config's `pixel_normalization`:
`aotd_jax.hf.processor_files.pixel_normalization`). Images additionally go through
LLaVA-NeXT's any-resolution tiling (`image_grid_pinpoints`). Uniform frame sampling helpers
pick which frames to decode.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from aotd_jax.models import llava_anyres
from aotd_jax.models.pixel_norms import CLIP_MEAN, CLIP_STD

DEFAULT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling


# ----------------------------------------------------------------------------------------------
# Pillow-exact resize
# ----------------------------------------------------------------------------------------------


def _bicubic(x: np.ndarray) -> np.ndarray:
  a = -0.5
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
  x = np.abs(x)
  return np.where(x < 1.0, 1.0 - x, 0.0)


# Pillow's filters: (function, support); a downscale widens the support by the scale (antialias).
_FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


@functools.lru_cache(maxsize=64)
def _resample_taps(
  in_size: int, out_size: int, kind: str = "bicubic"
) -> tuple[np.ndarray, np.ndarray]:
  """Pillow's `precompute_coeffs` + 8-bit normalisation: for each output pixel, the input
  indices (out, K) and fixed-point `kind` filter weights (out, K) int32 (0 past the window)."""
  fn, base_support = _FILTERS[kind]
  scale = in_size / out_size
  filterscale = max(scale, 1.0)
  support = base_support * filterscale
  center = (np.arange(out_size) + 0.5) * scale
  # C's (int) truncates toward zero; the lower bound is then clamped at 0 anyway.
  xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
  xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
  k = np.arange(int((xmax - xmin).max()))[None, :]
  inside = k < (xmax - xmin)[:, None]
  x = xmin[:, None] + k
  w = np.where(inside, fn((x - center[:, None] + 0.5) / filterscale), 0.0)
  total = w.sum(axis=1, keepdims=True)
  w = w / np.where(total == 0.0, 1.0, total)
  # Round half away from zero into fixed point, as Pillow's normalize_coeffs_8bpc.
  fixed = np.trunc(w * (1 << _PRECISION_BITS) + np.where(w < 0, -0.5, 0.5)).astype(np.int32)
  fixed[~inside] = 0
  idx = np.minimum(x, in_size - 1)
  idx.setflags(write=False)
  fixed.setflags(write=False)
  return idx, fixed


def _resample_axis(
  x: np.ndarray, in_size: int, out_size: int, axis: int, kind: str = "bicubic"
) -> np.ndarray:
  # int32 accumulation of uint8 x 22-bit weights, exactly as Pillow's 8-bit kernels do it.
  idx, weights = _resample_taps(in_size, out_size, kind)
  x = np.moveaxis(x, axis, -1)
  acc = np.full(x.shape[:-1] + (out_size,), 1 << (_PRECISION_BITS - 1), np.int32)
  for k in range(idx.shape[1]):
    acc += x[..., idx[:, k]].astype(np.int32) * weights[:, k]
  out = np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)
  return np.moveaxis(out, -1, axis)


def resize_bicubic_numpy(
  images: np.ndarray, height: int, width: int, kind: str = "bicubic"
) -> np.ndarray:
  """Pillow's uint8 bicubic (or `kind="bilinear"`) resize re-implemented in numpy (bit-exact;
  ~10x slower than Pillow)."""
  in_h, in_w = images.shape[-3], images.shape[-2]
  passes = [(-2, in_w, width), (-3, in_h, height)]
  # Pillow (>= 10) shrinks rows first when the height drops by more than twice the width's
  # drop; the uint8 rounding between passes makes the order visible in the output.
  if in_h - height > 0 and in_h - height > (in_w - width) * 2:
    passes.reverse()
  out = images
  for axis, size_in, size_out in passes:
    if size_out != size_in:
      out = _resample_axis(out, size_in, size_out, axis, kind)
  return out


def resize_bicubic(
  images: np.ndarray, height: int, width: int, kind: str = "bicubic"
) -> np.ndarray:
  """Resizes (..., H, W, 3) uint8 images exactly as transformers' PIL backend does
  (`PIL.Image.resize(..., BICUBIC)`, or `BILINEAR` with `kind="bilinear"`): with Pillow when
  installed (it comes with matplotlib), else with the numpy port."""
  if images.dtype != np.uint8:
    raise ValueError(f"resize_bicubic: expected uint8 pixels, got {images.dtype}")
  if kind not in _FILTERS:
    raise ValueError(f"resize_bicubic: kind={kind!r} is not one of {sorted(_FILTERS)}")
  if (height, width) == images.shape[-3:-1]:
    return images
  try:
    import PIL.Image
  except ImportError:
    return resize_bicubic_numpy(images, height, width, kind)
  resample = PIL.Image.BICUBIC if kind == "bicubic" else PIL.Image.BILINEAR
  flat = images.reshape((-1,) + images.shape[-3:])
  out = np.stack(
    [np.asarray(PIL.Image.fromarray(f).resize((width, height), resample)) for f in flat]
  )
  return out.reshape(images.shape[:-3] + out.shape[-3:])


# ----------------------------------------------------------------------------------------------
# Geometry shared with transformers' processors
# ----------------------------------------------------------------------------------------------


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
  """Output (H, W) that scales the shorter side to `shortest_edge` (long side truncated)."""
  short, long = (width, height) if width <= height else (height, width)
  new_long = int(shortest_edge * long / short)
  return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def center_crop(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre crop of (..., H, W, C), zero padding an image smaller than the crop."""
  in_h, in_w = images.shape[-3], images.shape[-2]
  if in_h < height or in_w < width:
    new_h, new_w = max(height, in_h), max(width, in_w)
    canvas = np.zeros(images.shape[:-3] + (new_h, new_w, images.shape[-1]), images.dtype)
    top, left = math.ceil((new_h - in_h) / 2), math.ceil((new_w - in_w) / 2)
    canvas[..., top : top + in_h, left : left + in_w, :] = images
    # transformers crops the padded canvas at the original image's centre offsets.
    top0, left0 = (in_h - height) // 2 + top, (in_w - width) // 2 + left
    return canvas[..., max(0, top0) : top0 + height, max(0, left0) : left0 + width, :]
  top, left = (in_h - height) // 2, (in_w - width) // 2
  return images[..., top : top + height, left : left + width, :]


def normalize(
  images: np.ndarray,
  *,
  rescale_factor: float = 1 / 255,
  mean: Sequence[float] = CLIP_MEAN,
  std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
  """(..., H, W, C) uint8 -> (..., C, H, W) float32: rescale in float64, normalise in float32.

  Through a per-channel table of the 256 values (the same arithmetic, bit for bit, ~3x faster
  than computing it per pixel: a 32-frame 336 px clip is ~0.1 s of host time per call)."""
  images = np.asarray(images)
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  if images.dtype != np.uint8 or mean.shape != (images.shape[-1],) or std.shape != mean.shape:
    x = (images.astype(np.float64) * rescale_factor).astype(np.float32)
    return np.moveaxis((x - mean) / std, -1, -3)
  values = (np.arange(256, dtype=np.float64) * rescale_factor).astype(np.float32)
  table = (values[None, :] - mean[:, None]) / std[:, None]
  out = np.empty(images.shape[:-3] + (images.shape[-1],) + images.shape[-3:-1], np.float32)
  for c in range(images.shape[-1]):
    np.take(table[c], images[..., c], out=out[..., c, :, :])
  return out


def _check_pixels(x: np.ndarray, name: str, ndim: int, layout: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != ndim or x.shape[-1] != 3:
    raise ValueError(f"{name}: expected {layout} with 3 RGB channels last, got shape {x.shape}")
  if x.dtype != np.uint8:
    raise ValueError(f"{name}: expected uint8 pixels (0..255), got dtype {x.dtype}")
  if min(x.shape[-3], x.shape[-2]) < 1:
    raise ValueError(f"{name}: empty frame of shape {x.shape}")
  return x


# ----------------------------------------------------------------------------------------------
# Video and image preprocessing
# ----------------------------------------------------------------------------------------------


VIDEO_RESIZES = ("shortest_edge", "square")


def preprocess_video(
  frames: np.ndarray,
  *,
  shortest_edge: int = 224,
  crop_size: int = 224,
  rescale_factor: float = 1 / 255,
  image_mean: Sequence[float] = CLIP_MEAN,
  image_std: Sequence[float] = CLIP_STD,
  resize: str = "shortest_edge",
  resample: str = "bicubic",
) -> np.ndarray:
  """(T, H, W, 3) uint8 frames -> `pixel_values_videos` of one clip, (T, 3, crop, crop) float32.

  `resize="shortest_edge"`: transformers' LLaVA-NeXT-Video processor (PIL backend): bicubic
  resize of the shortest edge, centre crop, rescale, normalisation by `image_mean` /
  `image_std` (CLIP's by default). `resize="square"`: LLaVA-OneVision's: a bicubic resize
  straight to crop x crop (the aspect ratio is not kept, nothing is cropped), then the same
  rescale and normalisation (OneVision's released processor: SigLIP's 0.5 / 0.5). Stack clips
  for a (B, T, 3, S, S) batch. `resample`: Pillow's "bicubic" (the processors') or "bilinear"
  (antialiased, as torchvision's `Resize` of the official AoTD's UniVTG features).
  """
  frames = _check_pixels(frames, "frames", 4, "(T, H, W, 3)")
  if resize == "square":
    x = resize_bicubic(frames, crop_size, crop_size, resample)
  elif resize == "shortest_edge":
    new_h, new_w = shortest_edge_size(frames.shape[1], frames.shape[2], shortest_edge)
    x = center_crop(resize_bicubic(frames, new_h, new_w, resample), crop_size, crop_size)
  else:
    raise ValueError(f"preprocess_video: resize={resize!r} is not one of {VIDEO_RESIZES}")
  return normalize(x, rescale_factor=rescale_factor, mean=image_mean, std=image_std)


def preprocess_image(
  image: np.ndarray,
  *,
  shortest_edge: int = 224,
  crop_size: int = 224,
  image_grid_pinpoints=DEFAULT_PINPOINTS,
  rescale_factor: float = 1 / 255,
  image_mean: Sequence[float] = CLIP_MEAN,
  image_std: Sequence[float] = CLIP_STD,
) -> tuple[np.ndarray, tuple[int, int]]:
  """(H, W, 3) uint8 -> (tiles (N, 3, crop, crop) float32, image_size (H, W)) any-res tiling.

  Tile 0 is the whole image squashed to the tile size; the rest cut the image letterboxed into
  the best `image_grid_pinpoints` resolution, as transformers' `LlavaNextImageProcessor`.
  """
  image = _check_pixels(image, "image", 3, "(H, W, 3)")
  pinpoints = [tuple(p) for p in image_grid_pinpoints]
  height, width = image.shape[:2]
  best_h, best_w = llava_anyres.select_best_resolution((height, width), pinpoints)
  scale_w, scale_h = best_w / width, best_h / height
  if scale_w < scale_h:
    new_h, new_w = min(math.ceil(height * scale_w), best_h), best_w
  else:
    new_h, new_w = best_h, min(math.ceil(width * scale_h), best_w)
  resized = resize_bicubic(image, new_h, new_w)
  pad_y, pad_x = (best_h - new_h) // 2, (best_w - new_w) // 2
  canvas = np.zeros((best_h, best_w, 3), np.uint8)
  canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
  tiles = [resize_bicubic(image, shortest_edge, shortest_edge)]
  tiles += [
    canvas[i : i + crop_size, j : j + crop_size]
    for i in range(0, best_h, crop_size)
    for j in range(0, best_w, crop_size)
  ]
  out = []
  for tile in tiles:
    tile = resize_bicubic(tile, *shortest_edge_size(tile.shape[0], tile.shape[1], shortest_edge))
    out.append(center_crop(tile, crop_size, crop_size))
  return normalize(np.stack(out), rescale_factor=rescale_factor, mean=image_mean, std=image_std), (
    height,
    width,
  )


def preprocess_images(images: Sequence[np.ndarray], **kw) -> dict[str, np.ndarray]:
  """A batch for the model: `pixel_values` (B, max_tiles, 3, S, S) zero padded, `image_sizes` (B, 2)."""
  results = [preprocess_image(im, **kw) for im in images]
  most = max(r[0].shape[0] for r in results)
  pixel_values = np.stack(
    [np.pad(t, ((0, most - t.shape[0]),) + ((0, 0),) * 3) for t, _ in results]
  )
  return {
    "pixel_values": pixel_values,
    "image_sizes": np.asarray([s for _, s in results], np.int64),
  }


# ----------------------------------------------------------------------------------------------
# Frame sampling and prompt expansion
# ----------------------------------------------------------------------------------------------


# How `n` frames are spread over a span of frames [start, end): "ours" takes both ends
# (transformers' `np.linspace(start, end - 1, n)`), "official" is the AoTD release's
# `np.linspace(0, vlen, n, endpoint=False).astype(int)` (its cot_construction.py, train.py and
# eval_nextqa.py), which starts at the span's first frame and never takes its last.
FRAME_SAMPLINGS = ("ours", "official")


def sample_frame_indices(
  num_frames_total: int,
  n: int,
  start: int | None = None,
  end: int | None = None,
  *,
  sampling: str = "ours",
) -> np.ndarray:
  """`n` frame indices spread uniformly over [start, end) (whole clip by default), int64.

  `sampling="ours"`: transformers' `np.linspace(start, end - 1, n).astype(int)`, both ends
  taken. `"official"`: the AoTD release's `np.linspace(start, end, n, endpoint=False)
  .astype(int)` (with start 0 and end the video's length, its formula exactly): frame
  `start + floor(i * (end - start) / n)`, the last frame never taken. Either way a short clip
  repeats frames rather than returning fewer than `n`.
  """
  if sampling not in FRAME_SAMPLINGS:
    raise ValueError(
      f"sample_frame_indices: frame_sampling={sampling!r} is not one of {FRAME_SAMPLINGS}"
    )
  if n < 1:
    raise ValueError(f"sample_frame_indices: n must be >= 1, got {n}")
  if num_frames_total < 1:
    raise ValueError(
      f"sample_frame_indices: the video has no frames (num_frames_total={num_frames_total})"
    )
  start = 0 if start is None else max(0, int(start))
  end = num_frames_total if end is None else min(int(end), num_frames_total)
  if end <= start:
    raise ValueError(
      f"sample_frame_indices: empty range start={start} end={end} "
      f"for a video of {num_frames_total} frames"
    )
  if sampling == "official":
    return np.linspace(start, end, n, endpoint=False).astype(np.int64)
  return np.linspace(start, end - 1, n).astype(np.int64)


def _expand(text: str, token: str, counts: Sequence[int], what: str) -> str:
  parts = text.split(token)
  if len(parts) - 1 != len(counts):
    raise ValueError(
      f"prompt has {len(parts) - 1} {token} placeholder(s) but {len(counts)} {what} "
      f"were given: {text[:80]!r}"
    )
  return parts[0] + "".join(token * int(c) + rest for c, rest in zip(counts, parts[1:]))


def expand_media_tokens(
  text: str,
  *,
  video_tokens: Sequence[int] = (),
  image_tokens: Sequence[int] = (),
  video_token: str = "<video>",
  image_token: str = "<image>",
) -> str:
  """Repeats each `<video>` / `<image>` placeholder to the number of features the model makes.

  `video_tokens[i]` / `image_tokens[i]` is the count for the i-th placeholder (see
  `aotd_jax.models.llava_anyres.num_video_tokens` / `num_image_tokens`).
  """
  text = _expand(text, image_token, image_tokens, "images")
  return _expand(text, video_token, video_tokens, "videos")
