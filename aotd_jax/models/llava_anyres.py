"""LLaVA-NeXT any-resolution geometry: grid choice, unpadding and visual-token counts.

Pure Python on sizes (and, for LLaVA-OneVision's bilinear resizes, their small numpy weight
matrices), shared by the model (`llava_next_video.py`, which packs the
tile features) and the preprocessor (`aotd_jax/data/video_processing.py`, which tiles the image
and writes the right number of `<image>` / `<video>` tokens). Every rule follows transformers'
LLaVA-NeXT code, including its integer truncations, so the counts agree token for token.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def select_best_resolution(
  original_size: Sequence[int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
  """The (height, width) of `possible_resolutions` that keeps most pixels and wastes fewest."""
  orig_h, orig_w = (int(s) for s in original_size)
  best, best_eff, best_waste = None, 0, float("inf")
  for height, width in possible_resolutions:
    scale = min(width / orig_w, height / orig_h)
    eff = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
    waste = width * height - eff
    if eff > best_eff or (eff == best_eff and waste < best_waste):
      best, best_eff, best_waste = (int(height), int(width)), eff, waste
  if best is None:
    raise ValueError(f"image_grid_pinpoints is empty or invalid: {possible_resolutions!r}")
  return best


def anyres_grid_shape(image_size: Sequence[int], grid_pinpoints, tile_size: int) -> tuple[int, int]:
  """Number of tiles (rows, cols) an image of `image_size` (H, W) is cut into."""
  height, width = select_best_resolution(image_size, grid_pinpoints)
  return height // tile_size, width // tile_size


def anyres_num_tiles(image_size: Sequence[int], grid_pinpoints, tile_size: int) -> int:
  """Tiles fed to the vision tower for one image: the grid plus the resized base image."""
  height, width = select_best_resolution(image_size, grid_pinpoints)
  return -(-height // tile_size) * -(-width // tile_size) + 1


def unpadded_extent(
  original_size: Sequence[int], current_size: Sequence[int]
) -> tuple[int, int, int, int]:
  """(top, bottom, left, right) of the feature map region that holds the image, not the padding.

  The processor letterboxes the image into the best grid resolution; the model crops the same
  rows/columns back out of the (rows*side, cols*side) feature map (transformers' `unpad_image`).
  """
  orig_h, orig_w = (int(s) for s in original_size)
  cur_h, cur_w = (int(s) for s in current_size)
  if orig_w / orig_h > cur_w / cur_h:
    new_h = int(round(orig_h * (cur_w / orig_w), 7))
    pad = (cur_h - new_h) // 2
    return pad, cur_h - pad, 0, cur_w
  new_w = int(round(orig_w * (cur_h / orig_h), 7))
  pad = (cur_w - new_w) // 2
  return 0, cur_h, pad, cur_w - pad


def num_image_tokens(
  image_size: Sequence[int],
  *,
  image_grid_pinpoints,
  tile_size: int,
  patch_size: int,
  vision_feature_select_strategy: str = "default",
) -> int:
  """`<image>` tokens for one image of original `image_size` (H, W), newline tokens included."""
  side = tile_size // patch_size
  rows, cols = anyres_grid_shape(image_size, image_grid_pinpoints, tile_size)
  top, bottom, left, right = unpadded_extent(image_size, (rows * side, cols * side))
  unpadded = (bottom - top) * (right - left) + (bottom - top)  # one newline per row
  base = side * side + (1 if vision_feature_select_strategy == "full" else 0)
  return unpadded + base


def pooled_side(side: int, stride: int) -> int:
  """Side of the pooled patch grid (AvgPool2d / MaxPool2d / Conv2d, kernel = stride, no padding)."""
  return (side - stride) // stride + 1


def num_video_tokens(
  num_frames: int, *, image_size: int, patch_size: int, spatial_pool_stride: int = 2
) -> int:
  """`<video>` tokens for a clip of `num_frames` frames of `image_size`² pixels after pooling."""
  side = pooled_side(image_size // patch_size, spatial_pool_stride)
  return num_frames * side * side


def anyres_max_extent(height: int, width: int, side: int, max_tiles: int) -> tuple[int, int]:
  """LLaVA-OneVision's `anyres_max_N` cap: the (rows, cols) an unpadded feature map of
  (height, width) patches is bilinearly resized to when it holds over ~N base tiles' worth
  (ratio > 1.1), else (height, width) unchanged (transformers' `pack_image_features`)."""
  ratio = math.sqrt(height * width / (max_tiles * side**2))
  if ratio > 1.1:
    return int(height // ratio), int(width // ratio)
  return height, width


def parse_anyres_max(vision_aspect_ratio: str) -> int:
  """`"anyres_max_9"` -> 9, with a clear error for anything else."""
  prefix = "anyres_max_"
  tail = vision_aspect_ratio[len(prefix) :] if vision_aspect_ratio.startswith(prefix) else ""
  if not tail.isdigit() or int(tail) < 1:
    raise ValueError(
      f"vision_aspect_ratio={vision_aspect_ratio!r}: expected 'anyres_max_<N>' with N >= 1"
    )
  return int(tail)


def onevision_image_tokens(
  image_size: Sequence[int],
  *,
  image_grid_pinpoints,
  tile_size: int,
  patch_size: int,
  max_tiles: int,
  vision_feature_select_strategy: str = "full",
) -> int:
  """`<image>` tokens of one LLaVA-OneVision image of original `image_size` (H, W): the base
  tile's patches, then the unpadded (and `anyres_max` capped) grid with one newline per row;
  a single-tile image is its patches plus one newline."""
  side = tile_size // patch_size
  base = side * side - (1 if vision_feature_select_strategy == "default" else 0)
  if anyres_num_tiles(image_size, image_grid_pinpoints, tile_size) == 1:
    return base + 1
  rows, cols = anyres_grid_shape(image_size, image_grid_pinpoints, tile_size)
  top, bottom, left, right = unpadded_extent(image_size, (rows * side, cols * side))
  h, w = anyres_max_extent(bottom - top, right - left, side, max_tiles)
  return base + h * (w + 1)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 weights of a 1-D bilinear resize as PyTorch's
  `interpolate(mode="bilinear", align_corners=False)` computes it (half-pixel centres, sources
  below 0 clamped to 0, no antialiasing): resizing a map is two small matmuls."""
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(out_size, dtype=np.float32)
  src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
  lo = np.minimum(src.astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo.astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  np.add.at(m, (np.arange(out_size), lo), np.float32(1) - frac)
  np.add.at(m, (np.arange(out_size), hi), frac)
  return m
